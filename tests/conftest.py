"""Shared fixtures: small real datasets made once per session (generic, reusable by any test)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A session-wide temporary folder for collected demonstrations."""
    return tmp_path_factory.mktemp("demos")


@pytest.fixture(scope="session")
def pushcube_demos(demo_root) -> Path:
    """Path to a ManiSkill ``.h5`` holding 2 successful PushCube-v1 motion-planning demos
    (rgb 128x128, pd_joint_pos), collected once per session with ``par-collect``. Its ``.json``
    lies next to it. Treat it as read-only; copy it before modifying."""
    from par_agent.data.collect import main, trajectory_path

    out = demo_root / "pushcube"
    rc = main(["--task", "PushCube-v1", "--num-demos", "2", "--out", str(out), "--workers", "1",
               "--camera-size", "128", "--no-progress"])
    assert rc == 0
    path = trajectory_path(out, "PushCube-v1")
    assert path.exists()
    return path


@pytest.fixture(scope="session")
def pickcube_demo(demo_root) -> Path:
    """Path to a ManiSkill ``.h5`` holding 1 successful PickCube-v1 demo (rgb 32x32), collected once per
    session with ``par-collect``; read-only."""
    from par_agent.data.collect import main, trajectory_path

    out = demo_root / "pickcube"
    assert main(["--task", "PickCube-v1", "--num-demos", "1", "--out", str(out), "--camera-size", "32",
                 "--no-progress"]) == 0
    return trajectory_path(out, "PickCube-v1")


@pytest.fixture(scope="session")
def pickcube_ee_demo(demo_root) -> Path:
    """Path to a ManiSkill ``.h5`` of 1 PickCube-v1 demo (rgb 32x32) in ``pd_ee_delta_pos``, made by
    ``par-collect --control-mode pd_ee_delta_pos`` (motion planning in pd_joint_pos, then ManiSkill's
    replay conversion); its pd_joint_pos source lies beside it. Read-only."""
    from par_agent.data.collect import main, trajectory_path
    from par_agent.data.convert import converted_path

    out = demo_root / "pickcube_ee"
    assert main(["--task", "PickCube-v1", "--num-demos", "1", "--out", str(out), "--camera-size", "32",
                 "--control-mode", "pd_ee_delta_pos", "--no-progress"]) == 0
    return converted_path(trajectory_path(out, "PickCube-v1"), "pd_ee_delta_pos")


@pytest.fixture
def tmp_video_folder(tmp_path) -> Path:
    """A folder with three short synthetic mp4 videos (64x64, 9/13/17 frames of moving squares)."""
    import imageio.v2 as imageio

    folder = tmp_path / "videos"
    folder.mkdir()
    for i, n in enumerate((9, 13, 17)):
        frames = np.zeros((n, 64, 64, 3), np.uint8)
        for t in range(n):
            frames[t, 8 + t: 24 + t, 10 + 2 * i: 26 + 2 * i] = (255, 80 * i, 40)
        imageio.mimwrite(folder / f"clip_{i}.mp4", list(frames), fps=20, codec="libx264",
                         quality=None, output_params=["-crf", "10"], macro_block_size=1)
    return folder


def copy_demo(src: Path, dst_dir: Path) -> Path:
    """Copy a trajectory ``.h5`` and its ``.json`` into ``dst_dir``; returns the new ``.h5`` path."""
    import shutil

    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / src.name)
    if src.with_suffix(".json").exists():
        shutil.copy(src.with_suffix(".json"), dst_dir / src.with_suffix(".json").name)
    return dst_dir / src.name


@pytest.fixture
def demo_copy(pushcube_demos, tmp_path) -> Path:
    """A private copy of :func:`pushcube_demos` that a test may modify."""
    return copy_demo(pushcube_demos, tmp_path / "copy")


os.environ.setdefault("TQDM_DISABLE", "1")


# fixtures that run ManiSkill (par-collect renders and plans): a test using one needs it too
MANISKILL_FIXTURES = {"pushcube_demos", "pickcube_demo", "pickcube_ee_demo", "demo_copy"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a ManiSkill fixture (directly or through another fixture) ``maniskill``,
    so ``-m "not maniskill"`` runs where ManiSkill cannot (a GPU image without it)."""
    for item in items:
        if MANISKILL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.maniskill)
