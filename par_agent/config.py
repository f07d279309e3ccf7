"""PARConfig: one dataclass for the whole Physical Autoregressive Model.

Fields are grouped by purpose. ``__post_init__`` rejects bad values with a ``ValueError``
that names the field. ``to_json`` / ``from_json`` round-trip exactly, and ``PARConfig.named``
returns the preset sizes (``tiny`` for tests, ``small`` for GPUs, ``cpu64`` the size of every shipped
checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_SAMPLERS = ("dpmsolver", "ddim")
_MASKS = ("ik", "causal")
# Fields a loaded checkpoint may change: inference settings that leave the weights as they are.
RUNTIME_FIELDS = ("num_inference_steps", "use_kv_cache", "sampler", "history", "evict_blocks")
ENV_KWARGS = ("control_mode", "obs_mode", "camera_size", "camera_fov", "cameras", "max_episode_steps")


@dataclass
class PARConfig:
    # --- observation / frame tokenizer -------------------------------------------------------
    image_size: int = 128
    """Side of the square camera image (pixels). Must be divisible by vae_stride * patch_size."""
    num_cameras: int = 1
    """Camera images per observation, stitched left to right (``image_size`` x ``num_cameras *
    image_size``, as ``envs.make_env(cameras=...)`` gives them). Each camera is encoded on its own
    and gets its own frame tokens, so P = num_cameras * camera_tokens."""
    vae_stride: int = 8
    """Spatial down-sampling of the KL autoencoder (2 ** (len(vae_channels) - 1))."""
    latent_channels: int = 4
    """Channels of the autoencoder latent."""
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    """Block widths of the small diffusers.AutoencoderKL (one per resolution level)."""
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 8
    """GroupNorm groups of the autoencoder; must divide every entry of vae_channels."""
    patch_size: int = 2
    """Latent patch side: a frame token holds latent_channels * patch_size**2 numbers."""

    # --- physical tokens ---------------------------------------------------------------------
    state_dim: int = 25
    """Size of the proprio/state vector (qpos, qvel and the task's extra fields)."""
    action_dim: int = 8
    """Size of one action (pd_joint_pos on Panda: 7 joints + gripper)."""
    chunk_size: int = 8
    """K: control steps per physical step (actions predicted per model call)."""
    history: int = 8
    """Maximum number of physical-step blocks kept in the context (training window length)."""
    task_names: tuple[str, ...] = ("PushCube-v1",)
    """One learned [TASK] embedding per name."""

    # --- causal backbone ---------------------------------------------------------------------
    width: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    dropout: float = 0.0
    attention_mask: str = "ik"
    """'ik': causal with inverse kinematics (``models/masks.py``; every shipped checkpoint), or
    'causal': a plain token-causal mask, for the ablation (in this layout it differs only inside a
    block's frame tokens, which then see the earlier ones instead of each other)."""

    # --- de-tokenizers (DiT heads) -----------------------------------------------------------
    frame_head_width: int = 160
    frame_head_depth: int = 3
    action_head_width: int = 160
    action_head_depth: int = 3
    head_num_heads: int = 4

    # --- diffusion ---------------------------------------------------------------------------
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    sampler: str = "dpmsolver"
    """Inference sampler: 'dpmsolver' (DPM-Solver++ multistep) or 'ddim'."""
    num_inference_steps: int = 6
    """Denoising steps per head at inference."""
    diffusion_batch_mul: int = 2
    """Noise draws per target in training (MAR's trick: reuse one backbone pass)."""
    frame_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    action_bins: int = 0
    """0: continuous actions, denoised by the action DiT (every shipped checkpoint). N >= 2: the
    discrete-action ablation: each normalised action dimension in N bins, read off the same head in
    one pass with a cross-entropy loss (``heads.BinnedActions``)."""

    # --- inference ---------------------------------------------------------------------------
    use_kv_cache: bool = True
    evict_blocks: int = 0
    """Blocks dropped when the context is full (0 = history // 2). Dropping several at once and
    re-filling the cache keeps positions and the first block identical to training windows."""

    # --- environment -------------------------------------------------------------------------
    env_kwargs: dict = field(default_factory=dict)
    """The ``envs.make_env`` keyword arguments of the env the demos came from (``control_mode``,
    ``obs_mode``, ``camera_size``, ``camera_fov``, ``cameras``, ``max_episode_steps``), recorded by
    ``par-train finetune``; ``{}`` when unknown. ``PARPolicy.env_kwargs`` exposes them."""

    def __post_init__(self) -> None:
        unknown_env = sorted(set(self.env_kwargs) - set(ENV_KWARGS))
        if unknown_env:
            raise ValueError(f"PARConfig.env_kwargs has unknown keys {unknown_env}; allowed: {list(ENV_KWARGS)}")
        cams = self.env_kwargs.get("cameras")
        if cams is not None and len(cams) != self.num_cameras:
            raise ValueError(f"PARConfig.env_kwargs records cameras {list(cams)}, but num_cameras={self.num_cameras}")
        self.vae_channels = tuple(int(c) for c in self.vae_channels)
        self.task_names = tuple(str(t) for t in self.task_names)
        positive = [
            "image_size", "num_cameras", "vae_stride", "latent_channels", "vae_layers_per_block", "vae_norm_groups",
            "patch_size", "state_dim", "action_dim", "chunk_size", "width", "depth", "num_heads",
            "frame_head_width", "frame_head_depth", "action_head_width", "action_head_depth",
            "head_num_heads", "num_train_timesteps", "num_inference_steps", "diffusion_batch_mul",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PARConfig.{name} must be a positive integer, got {value!r}")
        if self.history < 2:
            raise ValueError(f"PARConfig.history must be >= 2 blocks (one to act from, one to predict), got {self.history}")
        if not self.vae_channels:
            raise ValueError("PARConfig.vae_channels must not be empty")
        if 2 ** (len(self.vae_channels) - 1) != self.vae_stride:
            raise ValueError(
                f"PARConfig.vae_stride={self.vae_stride} does not match vae_channels={self.vae_channels}: "
                f"{len(self.vae_channels)} levels give a stride of {2 ** (len(self.vae_channels) - 1)}"
            )
        for c in self.vae_channels:
            if c % self.vae_norm_groups:
                raise ValueError(f"PARConfig.vae_norm_groups={self.vae_norm_groups} must divide every vae_channels entry, not {c}")
        stride = self.vae_stride * self.patch_size
        if self.image_size % stride:
            raise ValueError(
                f"PARConfig.image_size={self.image_size} must be divisible by vae_stride*patch_size={stride}"
            )
        for w, h, name in [
            (self.width, self.num_heads, "width"),
            (self.frame_head_width, self.head_num_heads, "frame_head_width"),
            (self.action_head_width, self.head_num_heads, "action_head_width"),
        ]:
            if w % h or (w // h) % 2:
                raise ValueError(f"PARConfig.{name}={w} must split into heads of even size (heads={h})")
        if not self.task_names:
            raise ValueError("PARConfig.task_names must name at least one task")
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"PARConfig.task_names has duplicates: {self.task_names}")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"PARConfig.prediction_type must be one of {_PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.action_bins == 1 or self.action_bins < 0:
            raise ValueError(f"PARConfig.action_bins must be 0 (continuous) or at least 2, got {self.action_bins}")
        if self.attention_mask not in _MASKS:
            raise ValueError(f"PARConfig.attention_mask must be one of {_MASKS}, got {self.attention_mask!r}")
        if self.sampler not in _SAMPLERS:
            raise ValueError(f"PARConfig.sampler must be one of {_SAMPLERS}, got {self.sampler!r}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("PARConfig.num_inference_steps must not exceed num_train_timesteps")
        if not 0 <= self.evict_blocks < self.history:
            raise ValueError(f"PARConfig.evict_blocks must be in [0, history), got {self.evict_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PARConfig.dropout must be in [0, 1), got {self.dropout}")

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        """Side of the latent grid."""
        return self.image_size // self.vae_stride

    @property
    def camera_tokens(self) -> int:
        """Frame tokens per camera image."""
        return (self.latent_size // self.patch_size) ** 2

    @property
    def frame_tokens(self) -> int:
        """P: frame tokens per observation (every camera's)."""
        return self.num_cameras * self.camera_tokens

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of one observation's stitched camera images."""
        return (self.image_size, self.num_cameras * self.image_size, 3)

    @property
    def token_dim(self) -> int:
        """Numbers in one frame token (latent patch)."""
        return self.latent_channels * self.patch_size**2

    @property
    def eviction(self) -> int:
        """Blocks dropped when the context is full."""
        return self.evict_blocks or max(1, self.history // 2)

    def task_id(self, task: str) -> int:
        if task not in self.task_names:
            raise ValueError(f"unknown task {task!r}; this model knows {list(self.task_names)}")
        return self.task_names.index(task)

    # --- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PARConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PARConfig fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "PARConfig":
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(path_or_text)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config {p or 'text'} is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "PARConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> "PARConfig":
        """Preset sizes: ``tiny`` (tests, 32x32 images), ``small`` (128x128 frames, for GPUs), ``cpu64``
        (64x64 frames, trains on a CPU; every shipped checkpoint)."""
        if name not in PRESETS:
            raise ValueError(f"unknown PARConfig preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=32, vae_channels=(8, 8, 16, 16), vae_norm_groups=4, width=32, depth=2, num_heads=2,
        frame_head_width=32, frame_head_depth=1, action_head_width=32, action_head_depth=1, head_num_heads=2,
        chunk_size=2, history=4, num_inference_steps=3, num_train_timesteps=100,
    ),
    "small": dict(),
    # what two CPU cores can train in about an hour: 64x64 frames (16 frame tokens), a 4-layer backbone
    "cpu64": dict(
        image_size=64, width=192, depth=4, num_heads=4, frame_head_width=128, frame_head_depth=2,
        action_head_width=128, action_head_depth=2, history=6,
    ),
}
