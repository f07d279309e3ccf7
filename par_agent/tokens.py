"""Physical-token observations: the PAR frame tokenizer and state normaliser as an observation
wrapper, so that any RL algorithm can learn on the tokens PAR itself reads.

    {"rgb": (H, W, 3) uint8, "state": (D,) float32}
        --> {"frame_tokens": (P, C) float32, "state": (D,) float32 normalised[, "rgb"]}

The tokens are computed with the model's own calls, ``model.frame_tokenizer.encode(frames)`` and
``model.state_norm.normalize(state)`` (what ``PhysicalAutoregressiveModel._block`` runs), so an
agent trained on them sees exactly what PAR sees.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.registration import WrapperSpec

from par_agent.device import resolve_device
from par_agent.models.normalizer import Normalizer
from par_agent.tokenizers.frames import FrameTokenizer


def _module_device(module: torch.nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _on_device(module: Optional[torch.nn.Module], device: torch.device) -> Optional[torch.nn.Module]:
    """``module`` itself when it already lives on ``device``, else a copy there (the caller's
    model is not moved, so a model shared with a policy or a trainer keeps its device)."""
    if module is None or _module_device(module) == device:
        return module
    return copy.deepcopy(module).to(device).eval()


class PhysicalTokenObservation(gym.ObservationWrapper):
    """PAR observation dict -> the physical token of the current step.

    Observations: ``{"frame_tokens": (P, C) float32, "state": (D,) float32}`` for one env, with a
    leading batch axis ``(B, ...)`` when the wrapped env is batched (its ``rgb`` space has rank 4,
    e.g. ``PARObservationWrapper`` over a GPU-simulated ManiSkill env). Numpy in -> numpy out (on
    the CPU); torch in -> torch out on ``device``. ``P = cfg.frame_tokens``, ``C = cfg.token_dim``.
    Frame tokens and state are unbounded floats (the tokens are unit-variance latents, the state is
    standardised), so both boxes are ``[-inf, inf]`` (as the base env's ``state`` box already is;
    Gymnasium's checker warns about infinite bounds, SB3 does not need them finite).

    ``spec`` is rebuildable (``spec.make()``) for a wrapper made by :meth:`from_pretrained` and
    ``None`` for one around an in-memory model.

    Args:
        env: an env speaking the PAR observation contract (``envs.make_env``) whose camera
            images match the tokenizer's ``image_size`` and number of cameras.
        tokenizer_or_model: a :class:`PhysicalAutoregressiveModel` (its ``frame_tokenizer`` and
            ``state_norm`` are used) or a bare :class:`FrameTokenizer`.
        device: where the tokenizer runs (under ``torch.no_grad``). A model on another device is
            copied there, not moved.
        keep_rgb: also return the raw frame as ``"rgb"`` (for video recording). Leave it off for
            training: :class:`par_agent.sb3.PhysicalTokenExtractor` ignores it, but SB3 would still
            store the images in its buffers.
        state_norm: with a bare tokenizer, the state normaliser (a ``Normalizer``); ``None`` leaves
            the state as it is. Not allowed together with a model (the model's own is used).

    Raises:
        ValueError: the env's frames are not the tokenizer's ``image_size`` (both sizes are named),
            the state sizes differ, or the observation space is not a PAR dict.
    """

    def __init__(self, env: gym.Env, tokenizer_or_model: torch.nn.Module, device: str | torch.device = "cpu",
                 keep_rgb: bool = False, state_norm: Optional[Normalizer] = None) -> None:
        super().__init__(env)
        if isinstance(tokenizer_or_model, FrameTokenizer):
            tokenizer = tokenizer_or_model
        elif isinstance(getattr(tokenizer_or_model, "frame_tokenizer", None), FrameTokenizer):
            if state_norm is not None:
                raise ValueError("pass state_norm only with a bare FrameTokenizer; a model brings its own state_norm")
            tokenizer, state_norm = tokenizer_or_model.frame_tokenizer, tokenizer_or_model.state_norm
        else:
            raise TypeError(
                f"tokenizer_or_model must be a PhysicalAutoregressiveModel or a FrameTokenizer, "
                f"got {type(tokenizer_or_model).__name__}"
            )
        self.device = resolve_device(device)  # "cuda" -> "cuda:0", so a model already there is not copied
        self.tokenizer: FrameTokenizer = _on_device(tokenizer, self.device)
        self.state_norm: Optional[Normalizer] = _on_device(state_norm, self.device)
        self.keep_rgb = keep_rgb
        self._rebuild_spec = None

        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "rgb" not in space.spaces or "state" not in space.spaces:
            raise ValueError(f"the env must give PAR observations {{'rgb', 'state'}} (envs.make_env), got {space}")
        rgb, state = space["rgb"], space["state"]
        self.batched = len(rgb.shape) == 4
        s, n = self.tokenizer.image_size, self.tokenizer.num_cameras
        h, w = rgb.shape[-3], rgb.shape[-2]
        if (h, w) != (s, n * s):
            raise ValueError(
                f"the frame tokenizer takes {s}x{n * s} frames ({n} camera(s) of {s}x{s}) but the env gives "
                f"{h}x{w} (HxW); make the env with camera_size={s} and {n} camera(s), or use a tokenizer "
                f"trained at {h}x{w}"
            )
        d = state.shape[-1]
        if self.state_norm is not None and self.state_norm.dim != d:
            raise ValueError(f"the state normaliser expects {self.state_norm.dim} state values but the env gives {d}")

        with torch.no_grad():  # token shape from one blank frame: (P, C)
            probe = self.tokenizer.encode(torch.zeros(1, s, s, 3, dtype=torch.uint8, device=self.device))
        p, c = probe.shape[-2:]
        lead = tuple(rgb.shape[:-3])
        single = {
            "frame_tokens": spaces.Box(-np.inf, np.inf, (p, c), np.float32),
            "state": spaces.Box(-np.inf, np.inf, (d,), np.float32),
        }
        if keep_rgb:
            single["rgb"] = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {k: spaces.Box(b.low.flat[0], b.high.flat[0], lead + b.shape, b.dtype) for k, b in single.items()}
        )
        if self.batched:  # read by ManiSkillVectorEnv through get_wrapper_attr
            self.single_observation_space = spaces.Dict(single)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, env: gym.Env, name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                        keep_rgb: bool = False) -> "PhysicalTokenObservation":
        """Tokenize with the tokenizer and state normaliser of a PAR checkpoint: a built-in name
        (``par-pushcube``), a local folder or a Hugging Face Hub id (see ``par_agent.hub``).

        The wrapper's ``spec`` rebuilds it (``env.spec.make()`` loads the checkpoint again).
        """
        from par_agent.models.par import PhysicalAutoregressiveModel

        model = PhysicalAutoregressiveModel.from_pretrained(name_or_path, device=device)
        wrapper = cls(env, model, device=device, keep_rgb=keep_rgb)
        if env.spec is not None:
            spec = copy.deepcopy(env.spec)
            spec.additional_wrappers += (WrapperSpec(
                name=cls.__name__,
                entry_point="par_agent.tokens:physical_tokens_from_pretrained",
                kwargs={"name_or_path": str(name_or_path), "device": str(device), "keep_rgb": keep_rgb},
            ),)
            wrapper._rebuild_spec = spec
        return wrapper

    @property
    def spec(self):
        """The env spec plus this wrapper when made by :meth:`from_pretrained` (``spec.make()``
        reloads the checkpoint); ``None`` for a wrapper around an in-memory model, which no spec
        can rebuild (Gymnasium's default would be a spec whose ``make`` fails)."""
        return self._rebuild_spec

    # ------------------------------------------------------------------ observations
    @torch.no_grad()
    def tokenize(self, rgb, state) -> dict[str, Any]:
        """rgb ``(..., H, W, 3)`` uint8 and state ``(..., D)`` (numpy or torch) -> the token dict
        (numpy float32 for numpy input, torch on ``device`` for torch input)."""
        is_torch = isinstance(rgb, torch.Tensor)
        frames = torch.as_tensor(rgb if is_torch else np.ascontiguousarray(rgb)).to(self.device)
        tokens = self.tokenizer.encode(frames).float()
        st = torch.as_tensor(state if is_torch else np.ascontiguousarray(state)).to(self.device, torch.float32)
        if self.state_norm is not None:
            st = self.state_norm.normalize(st)
        out = {"frame_tokens": tokens, "state": st}
        if not is_torch:
            out = {k: v.cpu().numpy().astype(np.float32, copy=False) for k, v in out.items()}
        if self.keep_rgb:
            out["rgb"] = rgb
        return out

    def observation(self, observation: dict) -> dict[str, Any]:
        return self.tokenize(observation["rgb"], observation["state"])


def physical_tokens_from_pretrained(env: gym.Env, name_or_path: str, device: str = "cpu",
                                    keep_rgb: bool = False) -> PhysicalTokenObservation:
    """Entry point of the wrapper's ``WrapperSpec`` (what ``env.spec.make()`` calls)."""
    return PhysicalTokenObservation.from_pretrained(env, name_or_path, device=device, keep_rgb=keep_rgb)


def make_token_vec_env(task: str, n_envs: int, checkpoint: str | os.PathLike, seed: int = 0,
                       vec_env_cls: str = "dummy", device: str = "cpu", keep_rgb: bool = False,
                       torch_threads: Optional[int] = None, **make_env_kwargs):
    """An SB3 ``DummyVecEnv`` / ``SubprocVecEnv`` of ``n_envs`` :func:`envs.make_env` copies, each
    wrapped in :class:`PhysicalTokenObservation` loaded from ``checkpoint`` (each process loads it
    once). Copy ``i`` is seeded with ``seed + i``, as in :func:`envs.make_vec_env`.

    Args:
        task: ManiSkill task id.
        n_envs: number of copies.
        checkpoint: built-in name, folder or hub id of a PAR checkpoint.
        seed: seed of copy 0.
        vec_env_cls: ``"dummy"`` (one process) or ``"subproc"`` (one process per copy).
        device: where each copy runs its tokenizer.
        keep_rgb: keep the raw frame under ``"rgb"``.
        torch_threads: ``torch.set_num_threads`` in each subprocess (``subproc`` only; 1 avoids
            oversubscribing the cores when several processes encode at once).
        **make_env_kwargs: forwarded to :func:`envs.make_env` (``camera_size`` defaults to the
            checkpoint's ``image_size``; ``reward_mode="normalized_dense"`` goes to ManiSkill).
    """
    from envs.make import make_vec_env
    from par_agent.config import PARConfig
    from par_agent.hub import CONFIG_NAME, resolve

    folder = resolve(checkpoint)  # fail here, in this process, on a bad name
    make_env_kwargs.setdefault("camera_size", PARConfig.from_json(folder / CONFIG_NAME).image_size)
    subproc = vec_env_cls == "subproc"

    def wrap(env):
        if subproc and torch_threads:
            torch.set_num_threads(torch_threads)
        return PhysicalTokenObservation.from_pretrained(env, str(folder), device=device, keep_rgb=keep_rgb)

    return make_vec_env(task, n_envs, seed=seed, vec_env_cls=vec_env_cls, wrapper=wrap, **make_env_kwargs)
