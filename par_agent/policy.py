"""PARPolicy: the Physical Autoregressive Model as a Stable-Baselines3 policy.

    policy = PARPolicy.from_pretrained("par-pushcube")
    action, _ = policy.predict(obs)                                   # one env, SB3 contract
    mean_reward, _ = evaluate_policy(policy, vec_env, n_eval_episodes=10)

The model runs once per chunk of K control steps and serves the chunk from a per-env queue.
Each env keeps its own context (a row of the model's ``Contexts``, KV cache included); it is
cleared when ``episode_start[i]`` is true. A batch of another size starts every env afresh, with
a warning. The frames the model imagined are available from
:meth:`PARPolicy.predicted_frames` for the side-by-side video.
"""
from __future__ import annotations

import warnings
from collections import deque
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.models.graphs import ChunkGraphs
from par_agent.models.locator import ObjectLocator, load_locator, locator_from_dict, save_locator
from par_agent.tokenizers.frames import resize_frames



@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def observation_space_for(cfg: PARConfig, locator: ObjectLocator | None = None) -> spaces.Dict:
    """The frames and the state the policy is given: the model's state, or the plain state ``locator`` completes."""
    state_dim = locator.cfg.plain_dim if locator is not None else cfg.state_dim
    return spaces.Dict({
        "rgb": spaces.Box(0, 255, cfg.frame_shape, np.uint8),
        "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
    })


def action_space_for(model: PhysicalAutoregressiveModel) -> spaces.Box:
    """The range of the training actions (what the model can output)."""
    low, high = model.action_norm.get_stats()
    return spaces.Box(low, high, dtype=np.float32)


class PARPolicy(BasePolicy):
    """SB3 policy wrapping a :class:`PhysicalAutoregressiveModel`.

    Args:
        model: the trained model.
        task: task name the policy acts on (one of ``model.cfg.task_names``; default the first).
        observation_space, action_space: default to the model's (see ``observation_space_for``);
            pass the env's action space to clip to it.
        seed: seed of the per-env noise generators used when ``deterministic=True``.
        config: instead of ``model``, the config of a new (untrained) model; SB3's ``load`` rebuilds
            the policy this way, then loads the saved weights into it.
        locator: the policy's state estimator, for a model fine-tuned on privileged task state
            (``par-locate``): an :class:`~par_agent.models.locator.ObjectLocator` that rebuilds those
            fields from each frame and the plain state before the model reads them. The policy is
            then given the plain state, and ``env_kwargs`` ask for ``obs_mode="rgb"``.
        locator_config: with ``config``, the locator's config (SB3's ``load``, as for ``config``).
        normalize_images: SB3's flag, accepted for ``load``; frames are always read as uint8 pixels.
        num_threads: torch intra-op threads while the policy computes (set for each ``predict`` call
            and restored after). 1 by default: a policy call is small, and on a machine where a
            simulator or renderer also runs, torch's default (one per core) made a control step
            75 times slower on 2 cores (329 ms against 4.4 ms). ``None`` keeps torch's setting.
            Floating-point results, and so deterministic rollouts, are reproducible for a given
            thread count.
        batch_envs: serve every env whose chunk ran out with one model call, whatever their context
            lengths (True, the default); False makes one call per env (for comparison).
        action_horizon: control steps executed of each predicted chunk of K before predicting again
            (closed-loop execution; default K, the whole chunk). With M < K the block committed to
            the context holds the M executed actions, padded to K by repeating the last, followed
            by the frame seen after them: the layout of an episode's short last block in training
            (``PhysicalStepDataset`` pads it the same way).
        chunk_graphs: serve lockstep chunks (every env at once, no eviction) through
            :class:`~par_agent.models.graphs.ChunkGraphs`: on a GPU the chunk's device work is
            replayed as two CUDA graphs, on the CPU it runs as two graphs compiled whole by
            inductor (``from_pretrained(..., compile=True)`` turns this on). Other calls stay eager.
    """

    def __init__(self, model: PhysicalAutoregressiveModel | None = None, task: str | None = None,
                 observation_space: spaces.Space | None = None, action_space: spaces.Box | None = None,
                 seed: int = 0, config: PARConfig | dict | None = None, normalize_images: bool = False,
                 num_threads: int | None = 1, batch_envs: bool = True, action_horizon: int | None = None,
                 locator: ObjectLocator | None = None, locator_config: dict | None = None,
                 chunk_graphs: bool = False) -> None:
        if (model is None) == (config is None):
            raise TypeError("PARPolicy needs exactly one of model= (a PhysicalAutoregressiveModel) or config=")
        if locator is not None and locator_config is not None:
            raise TypeError("PARPolicy takes locator= or locator_config=, not both")
        if model is None:
            from par_agent.hub import config_from_saved

            model = PhysicalAutoregressiveModel(config if isinstance(config, PARConfig) else config_from_saved(config))
        if locator_config is not None:
            locator = locator_from_dict(locator_config)
        if locator is not None and locator.cfg.privileged_dim != model.cfg.state_dim:
            raise ValueError(f"the locator rebuilds a state of {locator.cfg.privileged_dim} numbers; the model reads "
                             f"{model.cfg.state_dim}")
        super().__init__(observation_space or observation_space_for(model.cfg, locator),
                         action_space or action_space_for(model), normalize_images=False)
        self.model = model.eval()
        self.locator = locator.to(model.device).eval() if locator is not None else None
        self.task = task or self.cfg.task_names[0]
        self.task_index = self.cfg.task_id(self.task)
        self.seed = seed
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = num_threads
        self.chunk_graphs = chunk_graphs
        self.batch_envs = batch_envs
        K = self.cfg.chunk_size
        if action_horizon is not None and not 1 <= action_horizon <= K:
            raise ValueError(f"action_horizon must be between 1 and the chunk size {K}, got {action_horizon}")
        self.action_horizon = action_horizon or K
        self.reset()

    @property
    def cfg(self) -> PARConfig:
        """The model's config (one source: ``policy.model.set_runtime(...)`` changes are seen here)."""
        return self.model.cfg

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu", task: str | None = None,
                        action_space: spaces.Box | None = None, seed: int = 0, num_threads: int | None = 1,
                        action_horizon: int | None = None, compile: bool = False, **overrides: Any) -> "PARPolicy":
        """Load a policy from a built-in name (``par-pushcube``), a local folder or a hub id.

        ``num_threads``, ``action_horizon``: see the class docstring. ``compile=True`` serves lockstep
        chunks (every env at once) through ``chunk_graphs``: on the CPU each chunk's act and commit
        compiled whole by inductor, on CUDA captured as CUDA graphs. On the CPU the two diffusion heads
        are compiled too (``model.compile_heads``), for the calls that serve a subset of the envs.
        Every later chunk is faster; the first calls take two or three minutes longer (the first time
        on a machine; inductor caches the result): worth it for long evaluations, not for a few episodes.

        ``overrides`` (applied after loading): ``use_kv_cache``, ``num_inference_steps``,
        ``sampler``, ``history``, ``evict_blocks``.
        """
        from par_agent.hub import VIDEO_STAGES, checkpoint_extra, resolve

        folder = resolve(name_or_path)
        stage = checkpoint_extra(folder).get("stage") if (folder / "model.safetensors").is_file() else None
        if stage in VIDEO_STAGES:
            raise ValueError(f"{name_or_path} is a {stage} checkpoint: its action head was never trained, so it "
                             f"cannot act; fine-tune it on demos first (par-train finetune --init {name_or_path} "
                             "--data DEMOS)")
        model = PhysicalAutoregressiveModel.from_pretrained(folder, device=device, **overrides)
        if compile and model.device.type == "cpu":
            model.compile_heads("default")
        return cls(model, task=task, action_space=action_space, seed=seed, num_threads=num_threads,
                   action_horizon=action_horizon, locator=load_locator(folder), chunk_graphs=compile).to(model.device)

    def save_pretrained(self, folder, dtype: torch.dtype | None = None):
        """Write ``config.json`` + ``model.safetensors`` (weights, tokenizer, statistics), and the
        locator, if the policy has one, into ``locator/`` (in float32 whatever ``dtype``)."""
        out = self.model.save_pretrained(folder, dtype=dtype)
        if self.locator is not None:
            save_locator(self.locator, folder)
        return out

    def _get_constructor_parameters(self) -> dict[str, Any]:
        """What SB3's ``save`` stores beside the weights so that ``PARPolicy.load`` rebuilds the policy:
        the spaces, task, seed and the model's config (the weights, tokenizer and statistics are in
        the state dict)."""
        return {**super()._get_constructor_parameters(), "task": self.task, "seed": self.seed,
                "config": self.cfg.to_dict(), "num_threads": self.num_threads, "action_horizon": self.action_horizon,
                "locator_config": self.locator.cfg.to_dict() if self.locator is not None else None}

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``envs.make_env`` for the env this checkpoint was trained for:
        ``make_env(policy.task, **policy.env_kwargs)``. Older checkpoints record none; then the camera
        size is the model's frame size and the rest are make_env's defaults. With a locator the env's
        ``obs_mode`` is the plain ``"rgb"``: the locator rebuilds the privileged fields."""
        kw = {"camera_size": self.cfg.image_size, **self.cfg.env_kwargs}
        return {**kw, "obs_mode": "rgb"} if self.locator is not None else kw

    @property
    def input_state_dim(self) -> int:
        """Size of the state the policy is given: the model's, or the plain state its locator completes."""
        return self.locator.cfg.plain_dim if self.locator is not None else self.cfg.state_dim

    # ------------------------------------------------------------------ state
    def reset(self, n_envs: int | None = None) -> None:
        """Forget all history (of ``n_envs`` envs, default: keep the current count)."""
        n = n_envs if n_envs is not None else getattr(self, "n_envs", 0)
        self.n_envs = n
        self.context = self.model.new_contexts(n)
        graphs = getattr(self, "chunk_graphs", False) and n
        self.graphs = ChunkGraphs(self.model, self.context, compile=True) if graphs else None
        self.queues: list[deque] = [deque() for _ in range(n)]
        self.last_chunk: list[torch.Tensor | None] = [None] * n
        self.predicted_tokens: list[torch.Tensor | None] = [None] * n
        self.generators: list[torch.Generator | None] = [None] * n
        self.chunks_predicted = 0

    def reset_env(self, i: int) -> None:
        self.context.reset([i])
        self.queues[i].clear()
        self.last_chunk[i] = None
        self.predicted_tokens[i] = None
        self.generators[i] = None

    # ------------------------------------------------------------------ validation
    def _check_obs(self, observation: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        """Returns rgb (n, H, W, 3) uint8, state (n, Ds) float32 and whether the input was batched."""
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            raise ValueError("predict() got a (obs, info) tuple: pass only the observation dict (obs, info = env.reset())")
        if not isinstance(observation, dict):
            raise ValueError(f"observation must be a dict with keys 'rgb' and 'state', got {type(observation).__name__}")
        for key in ("rgb", "state"):
            if key not in observation:
                raise ValueError(f"observation is missing key {key!r}: expected keys ['rgb', 'state'], got {sorted(observation)}")
        rgb, st = observation["rgb"], observation["state"]
        rgb = rgb.detach().cpu().numpy() if torch.is_tensor(rgb) else np.asarray(rgb)
        st = st.detach().cpu().numpy() if torch.is_tensor(st) else np.asarray(st)
        s, n = self.cfg.image_size, self.cfg.num_cameras
        if rgb.dtype != np.uint8:
            raise ValueError(f"observation['rgb'] must have dtype uint8, got {rgb.dtype}")
        batched = rgb.ndim == 4
        if rgb.ndim in (3, 4) and rgb.shape[-1] > 3 and rgb.shape[-1] % 3 == 0:
            rgb = self._unstack_cameras(rgb)
        if rgb.ndim not in (3, 4) or rgb.shape[-1] != 3 or rgb.shape[-2] != n * rgb.shape[-3]:
            what = "a square channel-last image" if n == 1 else f"{n} square camera images side by side, channel-last,"
            raise ValueError(f"observation['rgb'] must have shape ({s}, {n * s}, 3) or (n_envs, {s}, {n * s}, 3) "
                             f"({what} of any size), got {rgb.shape}")
        if rgb.shape[-3] != s:
            rgb = self._resize(rgb)
        want = (rgb.shape[0], self.input_state_dim) if batched else (self.input_state_dim,)
        if st.shape != want:
            raise ValueError(f"observation['state'] must have shape {want}, got {st.shape} (its size depends on "
                             "the task and on the env's obs_mode: envs.flatten_state; a model trained on "
                             "privileged state needs make_env(..., obs_mode='rgb+state_dict'))")
        if not np.issubdtype(st.dtype, np.floating):
            raise ValueError(f"observation['state'] must have a float dtype (float32), got {st.dtype}")
        if not np.isfinite(st).all():
            bad = np.argwhere(~np.isfinite(st))[0].tolist()
            raise ValueError(f"observation['state'] has a non-finite value at index {bad}")
        if not batched:
            rgb, st = rgb[None], st[None]
        return rgb, st.astype(np.float32), batched

    def _unstack_cameras(self, rgb: np.ndarray) -> np.ndarray:
        """(..., H, H, 3m) camera images stacked along the channels, as ManiSkill's
        ``FlattenRGBDObservationWrapper`` gives several cameras (StackCube: base_camera, then the wrist's
        hand_camera) -> the policy's n cameras side by side, (..., H, n*H, 3). ManiSkill stacks the task's
        cameras before the robot's, and every checkpoint's cameras are the first of those
        (``base_camera``, then ``hand_camera``), so the first n stacked images are taken, with one warning."""
        m, n = rgb.shape[-1] // 3, self.cfg.num_cameras
        cams = self.env_kwargs.get("cameras") or ["base_camera"]
        if rgb.shape[-2] != rgb.shape[-3] or m < n:
            raise ValueError(f"observation['rgb'] has shape {rgb.shape}: {m} camera images stacked along the channels "
                             f"(ManiSkill's FlattenRGBDObservationWrapper), but this policy reads {cams} side by side; "
                             "build the env with make_env(task, **policy.env_kwargs)")
        if not getattr(self, "_warned_stacked", False):
            self._warned_stacked = True
            warnings.warn(f"observation['rgb'] holds {m} cameras stacked along the channels; this policy reads "
                          f"{cams}: the first {n} of them (ManiSkill's order: the task's cameras, then the robot's)",
                          stacklevel=5)
        return np.concatenate([rgb[..., 3 * i:3 * i + 3] for i in range(n)], axis=-2)

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        """(..., H, n*H, 3) -> (..., s, n*s, 3), antialiased as the training frames were. Warns once when
        H is not the camera size the model was trained with (an env made without ``**policy.env_kwargs``)."""
        size = rgb.shape[-3]
        if size != self.env_kwargs["camera_size"] and not getattr(self, "_warned_size", False):
            self._warned_size = True
            warnings.warn(f"camera images are {size}x{size}; this policy was trained on "
                          f"{self.env_kwargs['camera_size']}x{self.env_kwargs['camera_size']} camera images "
                          f"resized to {self.cfg.image_size}x{self.cfg.image_size}; resizing. Build the env "
                          "with make_env(task, **policy.env_kwargs) to match", stacklevel=4)
        lead = rgb.shape[:-3]
        return resize_frames(rgb.reshape(-1, *rgb.shape[-3:]), self.cfg.image_size).reshape(*lead, *self.cfg.frame_shape)

    # ------------------------------------------------------------------ acting
    def predict(self, observation: dict[str, np.ndarray], state: tuple[np.ndarray, ...] | None = None,
                episode_start: np.ndarray | None = None, deterministic: bool = False
                ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's contract: numpy in, numpy out, batch dimension added and removed as SB3 does.

        Returns actions (Da,) for one observation or (n_envs, Da) for a batch, clipped to the
        action space, and ``state`` unchanged (history is kept inside the policy, per env).
        """
        self.set_training_mode(False)
        with torch_threads(self.num_threads):
            return self._predict_numpy(observation, state, episode_start, deterministic)

    def _predict_numpy(self, observation, state, episode_start, deterministic):
        rgb, st, batched = self._check_obs(observation)
        n = rgb.shape[0]
        if n != self.n_envs:
            if self.context.blocks.any() and (
                    episode_start is None or not np.asarray(episode_start, dtype=bool).all()):
                warnings.warn(f"predict() got {n} observations after {self.n_envs}: every env's history is "
                              "cleared (pass episode_start=[True]*n, or policy.reset(n), when the envs change)",
                              stacklevel=3)
            self.reset(n)
        elif self.context.layout != self.model.context_layout or \
                (self.context.cache is not None) != self.cfg.use_kv_cache:  # model.set_runtime(...) since
            self.reset(n)
        if episode_start is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape[0] != n:
                raise ValueError(f"episode_start has {starts.shape[0]} entries for {n} observations")
            for i in np.flatnonzero(starts):
                self.reset_env(int(i))
        need = [i for i in range(n) if not self.queues[i]]
        if need:  # one model call for every env whose chunk ran out (or one per env, batch_envs=False)
            for group in ([need] if self.batch_envs else [[i] for i in need]):
                self._new_chunks(group, rgb, st, deterministic)
        out = np.stack([self.queues[i].popleft() for i in range(n)]).astype(np.float32, copy=False)
        if isinstance(self.action_space, spaces.Box):
            out = np.clip(out, self.action_space.low, self.action_space.high)
        return (out if batched else out[0]), state

    @torch.no_grad()
    def _new_chunks(self, envs: list[int], rgb: np.ndarray, st: np.ndarray, deterministic: bool) -> None:
        """Commit each env's last chunk and new observation, then imagine and act, for ``envs`` in one call.

        rgb (n, H, W, 3) uint8 and st (n, Ds) hold all envs' observations. Each env draws its own
        noise (frame, then actions) from its own generator, so an env's actions do not depend on
        which other envs share the call (up to float rounding)."""
        dev, cfg, model = self.model.device, self.cfg, self.model
        sel = np.asarray(envs)
        frames, state = torch.from_numpy(rgb[sel]).to(dev), torch.from_numpy(st[sel]).to(dev)
        if self.locator is not None:  # rebuilds the privileged fields the model reads from the frames
            state = self.locator.complete_state(frames, state)
        ctx = self.context
        started = ctx.started(envs)
        fresh = [j for j in range(len(envs)) if not started[j]]
        going = [j for j in range(len(envs)) if started[j]]
        if fresh:
            task = torch.full((len(fresh),), self.task_index, dtype=torch.long, device=dev)
            model.start(ctx, [envs[j] for j in fresh], task, frames[fresh], state[fresh])
            if deterministic:
                for j in fresh:
                    self.generators[envs[j]] = torch.Generator(device=dev).manual_seed(self.seed)
        lockstep = self.graphs is not None and envs == list(range(self.n_envs))
        if going:
            chunk = torch.cat([self.last_chunk[envs[j]] for j in going])
            if not (lockstep and not fresh and self.graphs.commit(chunk, frames, state)):
                model.commit(ctx, [envs[j] for j in going], chunk, frames[going], state[going])
        gens = [self.generators[i] if deterministic else None for i in envs]
        frame_noise = torch.cat([torch.randn((1, cfg.frame_tokens, cfg.token_dim), generator=g, device=dev) for g in gens])
        action_noise = torch.cat([torch.randn((1, cfg.chunk_size, cfg.action_dim), generator=g, device=dev) for g in gens])
        if lockstep:
            actions, tokens = self.graphs.act(frame_noise, action_noise)
        else:
            actions, tokens = model.act(ctx, envs, frame_noise, action_noise)
        M = self.action_horizon
        if M < cfg.chunk_size:  # executed actions, padded as the dataset pads an episode's last block
            actions = torch.cat([actions[:, :M], actions[:, M - 1:M].expand(-1, cfg.chunk_size - M, -1)], dim=1)
        chunks = actions[:, :M].cpu().numpy()
        for j, i in enumerate(envs):
            self.last_chunk[i], self.predicted_tokens[i] = actions[j:j + 1], tokens[j:j + 1]
            self.queues[i].extend(chunks[j])
        self.chunks_predicted += len(envs)

    def _predict(self, observation, deterministic: bool = False) -> torch.Tensor:  # SB3's abstract hook
        if not isinstance(observation, dict):
            raise ValueError(f"observation must be a dict with keys 'rgb' and 'state', got {type(observation).__name__}")
        obs = {k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in observation.items()}
        actions, _ = self.predict(obs, deterministic=deterministic)
        return torch.as_tensor(actions)

    def forward(self, observation, deterministic: bool = False) -> torch.Tensor:
        return self._predict(observation, deterministic)

    @torch.no_grad()
    def predicted_frames(self) -> list[np.ndarray | None]:
        """The frame each env's model imagined at its last chunk start (the frame it expects at
        the end of the chunk), decoded to uint8 (H, W, 3); None for envs without a prediction."""
        out: list[np.ndarray | None] = []
        for tok in self.predicted_tokens:
            out.append(None if tok is None else self.model.frame_tokenizer.decode(tok)[0].cpu().numpy())
        return out
