"""The object locator: where the task's objects are, read off one camera frame, turned into the
privileged state fields a policy was fine-tuned with.

A policy fine-tuned on ManiSkill's privileged task state (``python -m par_agent.data.privileged``)
reads, besides the arm, each object's pose and the vectors between objects and the gripper
(StackCube: ``cubeA_pose``, ``cubeB_pose``, ``tcp_to_cubeA_pos``, ``tcp_to_cubeB_pos``,
``cubeA_to_cubeB_pos``). A user's env gives none of them in ``obs_mode="rgb"``. The locator
estimates each object's position and yaw from the frame (and the arm's state) and
:meth:`ObjectLocator.complete_state` rebuilds every privileged field from those estimates by
ManiSkill's field names, so that the policy acts from the frame and the plain state only.
It is the policy's state estimator: ``PARPolicy.locator`` runs it before the model, and a policy's
checkpoint keeps it in its own folder, ``locator/``, beside the model's files.

The network keeps where things are: convolutions over the frame with two coordinate channels,
then a spatial soft-argmax per keypoint map (the expected image position of each map's softmax),
and an MLP from the keypoints and the normalised plain state to each object's position and yaw.
A cube looks the same every quarter turn, so yaw is learned as (cos 4θ, sin 4θ) and returned as
the rotation about z in [-45°, 45°] (``yaw_symmetry``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

Fields = tuple[tuple[str, int], ...]


@dataclass
class LocatorConfig:
    """What a locator reads and writes.

    Args:
        objects: ManiSkill's names of the objects it locates (``cubeA``, ``cubeB``).
        plain_fields: the env's state layout, ``(name, size)`` in order (``obs_mode="rgb"``), with
            ``agent/qpos`` and ``agent/qvel`` first; its input.
        privileged_fields: the privileged state layout the policy's model reads (``obs_mode="rgb+state_dict"``,
            the plain fields and the task's object fields); what
            :meth:`ObjectLocator.complete_state` returns.
        image_size: frame side it reads (one camera's square).
        camera: which camera of a side-by-side frame it reads (0: the leftmost).
        width: channels of its convolutions.
        keypoints: soft-argmax keypoint maps per object.
        yaw_symmetry: turns about z that leave an object looking the same (4 for a cube).
    """

    objects: tuple = ()
    plain_fields: Fields = ()
    privileged_fields: Fields = ()
    image_size: int = 64
    camera: int = 0
    width: int = 32
    keypoints: int = 8
    yaw_symmetry: int = 4

    def __post_init__(self) -> None:
        self.objects = tuple(str(o) for o in self.objects)
        self.plain_fields = tuple((str(n), int(s)) for n, s in self.plain_fields)
        self.privileged_fields = tuple((str(n), int(s)) for n, s in self.privileged_fields)
        if not self.objects:
            raise ValueError("LocatorConfig.objects is empty: name the objects to locate, e.g. ('cubeA', 'cubeB')")
        plain = dict(self.plain_fields)
        if "extra/tcp_pose" not in plain and any(n.startswith("extra/tcp_to_") for n, _ in self.privileged_fields):
            raise ValueError("the plain state has no extra/tcp_pose, so tcp_to_* fields cannot be rebuilt")
        for name, size in self.privileged_fields:  # every field must be either plain or rebuilt
            if name in plain:
                if plain[name] != size:
                    raise ValueError(f"{name} has size {plain[name]} in the plain state but {size} in the privileged one")
            elif field_rule(name, self.objects, plain) is None:
                raise ValueError(f"the locator cannot rebuild {name}: it is not in the plain state and names no "
                                 f"located object among {list(self.objects)}")

    @property
    def plain_dim(self) -> int:
        return sum(s for _, s in self.plain_fields)

    @property
    def privileged_dim(self) -> int:
        return sum(s for _, s in self.privileged_fields)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plain_fields"] = [list(f) for f in self.plain_fields]
        d["privileged_fields"] = [list(f) for f in self.privileged_fields]
        d["objects"] = list(self.objects)
        return d


def _point(name: str, objects: tuple, plain: dict) -> str | None:
    """Where the position of ``name`` comes from: ``"obj:<name>"`` (located), ``"plain:<field>"``, or None."""
    if name in objects:
        return f"obj:{name}"
    for f in (f"extra/{name}_pos", f"extra/{name}_pose"):
        if f in plain:
            return f"plain:{f}"
    return None


def field_rule(name: str, objects: tuple, plain: dict) -> tuple | None:
    """How a privileged field is rebuilt: ``("pose", obj)`` or ``("diff", src, dst)`` (dst - src), else None."""
    if not name.startswith("extra/"):
        return None
    short = name[len("extra/"):]
    if short.endswith("_pose") and short[:-len("_pose")] in objects:
        return ("pose", short[:-len("_pose")])
    if short.endswith("_pos") and "_to_" in short:
        src, dst = short[:-len("_pos")].split("_to_", 1)
        a, b = _point(src, objects, plain), _point(dst, objects, plain)
        if a is not None and b is not None and (a.startswith("obj:") or b.startswith("obj:")):
            return ("diff", a, b)
    return None


def yaw_of(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions, ManiSkill's (w, x, y, z) -> (...,) rotation about z, radians."""
    w, x, y, z = quat.unbind(-1)
    return torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class SpatialSoftArgmax(nn.Module):
    """(B, K, H, W) maps -> (B, K, 2): each map's softmax-weighted mean (x, y) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        B, K, H, W = maps.shape
        p = torch.softmax(maps.flatten(2) / self.log_temperature.exp(), dim=-1).view(B, K, H, W)
        ys = torch.linspace(-1, 1, H, device=maps.device, dtype=p.dtype)
        xs = torch.linspace(-1, 1, W, device=maps.device, dtype=p.dtype)
        return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


class ObjectLocator(nn.Module):
    """Frames (B, H, W, 3) uint8 and plain state (B, Dp) -> each object's position and yaw.

    ``forward`` returns the normalised prediction (B, n_objects, 5): position (3, standardised with
    the training statistics) and (cos kθ, sin kθ); :meth:`locate` returns raw positions (B, n, 3) in
    metres and yaw (B, n) in radians; :meth:`complete_state` the privileged state (B, Df)."""

    def __init__(self, cfg: LocatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, n = cfg.width, len(cfg.objects)
        self.convs = nn.Sequential(
            nn.Conv2d(5, w, 3, 1, 1), nn.GELU(), nn.Conv2d(w, w, 3, 2, 1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU(),
            nn.Conv2d(2 * w, n * cfg.keypoints, 1))
        self.soft_argmax = SpatialSoftArgmax()
        self.head = nn.Sequential(nn.Linear(n * cfg.keypoints * 2 + cfg.plain_dim, 256), nn.GELU(),
                                  nn.Linear(256, 256), nn.GELU(), nn.Linear(256, n * 5))
        for name, size in (("state_mean", cfg.plain_dim), ("pos_mean", 3 * n)):
            self.register_buffer(name, torch.zeros(size))
            self.register_buffer(name.replace("mean", "std"), torch.ones(size))

    def set_stats(self, state: torch.Tensor, positions: torch.Tensor) -> None:
        """Normalisation from training data: plain states (N, Dp), object positions (N, n, 3)."""
        self.state_mean.copy_(state.mean(0))
        self.state_std.copy_(state.std(0).clamp(min=1e-3))
        p = positions.flatten(1)
        self.pos_mean.copy_(p.mean(0))
        self.pos_std.copy_(p.std(0).clamp(min=1e-3))

    def _camera(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, n*H, 3) uint8 -> the located camera's (B, 3, H, H) float in [0, 1]."""
        s = frames.shape[1]
        x = frames[:, :, self.cfg.camera * s:(self.cfg.camera + 1) * s]
        if s != self.cfg.image_size:
            raise ValueError(f"the locator reads {self.cfg.image_size}x{self.cfg.image_size} frames, got {s}x{s}")
        return x.permute(0, 3, 1, 2).float() / 255

    def forward(self, frames: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """frames (B, H, W, 3) uint8, state (B, Dp) -> (B, n, 5) normalised (see class docstring)."""
        x = self._camera(frames)
        B, _, H, W = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device), torch.linspace(-1, 1, W, device=x.device),
                                indexing="ij")
        x = torch.cat([x, xs.expand(B, 1, H, W), ys.expand(B, 1, H, W)], dim=1)
        kp = self.soft_argmax(self.convs(x)).flatten(1)
        s = (state.float() - self.state_mean) / self.state_std
        return self.head(torch.cat([kp, s], dim=-1)).view(B, len(self.cfg.objects), 5)

    def targets(self, positions: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """Raw positions (B, n, 3) and yaw (B, n) -> the normalised (B, n, 5) that ``forward`` predicts."""
        B, n = yaw.shape
        p = (positions.flatten(1) - self.pos_mean) / self.pos_std
        k = self.cfg.yaw_symmetry
        return torch.cat([p.view(B, n, 3), torch.stack([torch.cos(k * yaw), torch.sin(k * yaw)], -1)], dim=-1)

    def locate(self, frames: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> positions (B, n, 3) in metres, yaw (B, n) in radians, in [-pi/k, pi/k]."""
        out = self(frames, state)
        B, n, _ = out.shape
        pos = (out[..., :3].flatten(1) * self.pos_std + self.pos_mean).view(B, n, 3)
        yaw = torch.atan2(out[..., 4], out[..., 3]) / self.cfg.yaw_symmetry
        return pos, yaw

    def save_pretrained(self, folder) -> Path:
        """Write ``config.json`` (the :class:`LocatorConfig`) + ``model.safetensors`` into ``folder``, atomically."""
        from par_agent.hub import save_module

        return save_module(self, self.cfg.to_dict(), folder)

    @classmethod
    def from_pretrained(cls, folder) -> "ObjectLocator":
        """The locator :meth:`save_pretrained` wrote into ``folder``, in eval mode; errors name the bad file."""
        from par_agent.hub import read_module

        config, state, _ = read_module(folder)
        return locator_from_parts(config, state, folder)

    def complete_state(self, frames: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """frames (B, H, W, 3) uint8, plain state (B, Dp) -> the privileged state (B, Df) the model reads."""
        if state.shape[-1] != self.cfg.plain_dim:
            raise ValueError(f"the locator expects the plain state of {self.cfg.plain_dim} numbers, got {state.shape[-1]}")
        pos, yaw = self.locate(frames, state)
        return assemble_state(self.cfg, state.float(), pos, yaw)


def assemble_state(cfg: LocatorConfig, plain: torch.Tensor, positions: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """The privileged state (B, Df) from the plain state (B, Dp), object positions (B, n, 3) and yaw (B, n)."""
    fields, start = {}, 0
    for name, size in cfg.plain_fields:
        fields[name] = plain[:, start:start + size]
        start += size
    obj = {o: i for i, o in enumerate(cfg.objects)}

    def point(src: str) -> torch.Tensor:
        kind, name = src.split(":", 1)
        return positions[:, obj[name]] if kind == "obj" else fields[name][:, :3]

    half = yaw / 2
    zeros = torch.zeros_like(half)
    quat = torch.stack([torch.cos(half), zeros, zeros, torch.sin(half)], dim=-1)  # (B, n, 4), w x y z
    parts = []
    plain_names = dict(cfg.plain_fields)
    for name, size in cfg.privileged_fields:
        if name in plain_names:
            parts.append(fields[name])
            continue
        rule = field_rule(name, cfg.objects, plain_names)
        if rule[0] == "pose":
            i = obj[rule[1]]
            parts.append(torch.cat([positions[:, i], quat[:, i]], dim=-1)[:, :size])
        else:
            parts.append(point(rule[2]) - point(rule[1]))
    return torch.cat(parts, dim=-1)


def locator_from_dict(d: dict) -> ObjectLocator:
    """An untrained locator of the config :meth:`LocatorConfig.to_dict` wrote (par-agent 0.1 named
    ``privileged_fields`` ``full_fields``); names a bad field."""
    if "full_fields" in d and "privileged_fields" not in d:
        d = {("privileged_fields" if k == "full_fields" else k): v for k, v in d.items()}
    try:
        return ObjectLocator(LocatorConfig(**d))
    except TypeError as e:  # an unknown or missing field
        raise ValueError(f"bad locator config: {e}") from e


def save_locator(locator: ObjectLocator, folder) -> Path:
    """Write the locator a policy owns into its checkpoint ``folder``, as ``folder/locator/``."""
    from par_agent.hub import LOCATOR_DIR

    return locator.save_pretrained(Path(folder) / LOCATOR_DIR)


def load_locator(folder) -> ObjectLocator | None:
    """The object locator of a policy's checkpoint ``folder`` (``locator/``, or inside the model's own
    files as par-agent 0.1 wrote it), in eval mode; None when it has none."""
    from par_agent.hub import LOCATOR_DIR, read_module, split_legacy_locator

    folder = Path(folder)
    if (folder / LOCATOR_DIR).is_dir():
        return ObjectLocator.from_pretrained(folder / LOCATOR_DIR)
    config, state, _ = read_module(folder)
    _, _, config, state = split_legacy_locator(config, state)
    return None if config is None else locator_from_parts(config, state, folder)


def locator_from_parts(config: dict, state: dict, source) -> ObjectLocator:
    """A locator of a saved config and weights, in eval mode; errors name ``source``."""
    from par_agent.hub import CheckpointError, load_state

    try:
        net = locator_from_dict(config)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    load_state(net, state, source)
    return net.eval()


__all__ = ["LocatorConfig", "ObjectLocator", "assemble_state", "yaw_of", "locator_from_dict", "save_locator",
           "load_locator"]
