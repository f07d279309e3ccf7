"""par-agent: the Physical Autoregressive Model (PAR, arXiv 2508.09822) as a robot policy."""
from setuptools import find_packages, setup

setup(
    name="par-agent",
    version="0.1.0",
    description="Physical Autoregressive Model (PAR) as a drop-in Gymnasium / Stable-Baselines3 robot policy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["par_agent", "par_agent.*", "envs", "envs.*"]),
    package_data={"par_agent": ["pretrained/*/*.json", "pretrained/*/*.safetensors", "pretrained/*/locator/*"]},
    install_requires=[
        # torch is pinned: 2.13.0 (CPU) lies on disk on our Debian 12 machines; an open
        # range would pull a multi-GB CUDA build. On a GPU machine install torch first.
        "torch==2.13.0",
        # mplib 0.1.1 (ManiSkill's motion planner) segfaults with numpy 2.x.
        "numpy>=1.24,<2",
        "mani-skill==3.0.1",
        "gymnasium>=1.0,<2",
        "stable-baselines3>=2.3,<3",
        "diffusers>=0.30",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "einops>=0.7",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.5",
        "pillow>=9",
        "h5py>=3.8",
        "tqdm>=4.60",
        "tensorboard>=2.14",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100"],
        "dist": ["accelerate>=0.30"],
    },
    entry_points={
        "console_scripts": [
            "par-collect=par_agent.data.collect:main",
            "par-train=par_agent.train:main",
            "par-eval=par_agent.evaluate:main",
            "par-locate=par_agent.locate:main",
        ]
    },
)
