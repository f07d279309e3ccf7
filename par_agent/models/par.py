"""PhysicalAutoregressiveModel: physical tokens in, frame and action diffusion losses out
(parallel training), and the imagine-then-act inference loop with a KV cache.

Training (one forward for a whole window of T blocks, see ``masks.py`` for the layout):
    frame loss:  F_{n+1} denoised from the outputs of block n     (n = 0..T-2)
    action loss: A_n denoised from the outputs of [F_{n+1}, BOA]   (n = 0..T-2)

Inference (``InferenceState`` holds the context of a batch of episodes in lockstep)::

    st = model.start(task, frames_0, state_0)          # prefill [TASK][F_0 S_0]
    loop:
        f = model.predict_frame(st)                    # imagine F_{n+1}
        a = model.predict_actions(st, f)               # append [F^ BOA], sample A_n, roll back
        ... execute a, observe o_{n+1} ...
        model.commit(st, a, frames, state)             # append the real [F BOA A S]

The context holds at most ``history`` blocks (the real ones plus the imagined one). When it is
full, ``eviction`` blocks are dropped at once, the first remaining block is cut back to
[F S] and the cache is refilled, so the context always looks like a training window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from par_agent.config import RUNTIME_FIELDS, PARConfig
from par_agent.models.heads import ActionHead, Diffusion, FrameHead, camera_rows, frame_positions, repeat_cond
from par_agent.models.masks import BlockSpec, Kind, ik_attention_mask, window_layout
from par_agent.models.transformer import Backbone, KVCache
from par_agent.models.normalizer import Normalizer
from par_agent.models.locator import ObjectLocator, locator_from_dict
from par_agent.models.perception import PerceptionHead
from par_agent.models.value import ProgressHead
from par_agent.tokenizers.frames import FrameTokenizer


@lru_cache(maxsize=64)
def _window_indices(spec: BlockSpec, num_blocks: int, device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """Positions of the tokens the heads read, and the attention mask, for a training window: made once
    per layout and device, so a training step copies nothing from the host."""
    block, kind = window_layout(spec, num_blocks)
    pos = torch.arange(len(block))
    frame = torch.stack([pos[(block == n) & (kind == Kind.FRAME)] for n in range(num_blocks)])
    last = torch.stack([pos[block == n][-1] for n in range(num_blocks)])
    out = {"block": block, "kind": kind, "frame": frame, "last": last,
           "mask": ik_attention_mask(block, kind, pos, block, kind, pos)}
    if spec.has_actions and num_blocks > 1:
        out["boa"] = torch.stack([pos[(block == n) & (kind == Kind.BOA)][0] for n in range(1, num_blocks)])
    return {k: v.to(device) for k, v in out.items()}


@dataclass
class InferenceState:
    """Context of B episodes that advance in lockstep.

    blocks: input embeddings of the real blocks, each (B, L_n, D), with kinds (L_n,).
    hidden: backbone outputs of the last real block (B, L_last, D).
    """

    task: torch.Tensor
    blocks: list[torch.Tensor] = field(default_factory=list)
    kinds: list[torch.Tensor] = field(default_factory=list)
    cache: KVCache | None = None
    hidden: torch.Tensor | None = None
    steps: int = 0  # physical steps committed since start

    @property
    def batch_size(self) -> int:
        return self.task.shape[0]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


class PhysicalAutoregressiveModel(nn.Module):
    def __init__(self, cfg: PARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, K = cfg.width, cfg.chunk_size
        self.frame_tokenizer = FrameTokenizer(cfg)
        self.action_norm = Normalizer(cfg.action_dim, "minmax")
        self.state_norm = Normalizer(cfg.state_dim, "meanstd")
        self.task_emb = nn.Embedding(len(cfg.task_names), D)
        self.kind_emb = nn.Embedding(len(Kind), D)
        self.frame_in = nn.Linear(cfg.token_dim, D)
        self.frame_pos = nn.Parameter(torch.randn(cfg.camera_tokens, D) * 0.02)
        self.camera_pos = camera_rows(cfg.num_cameras, D)
        self.state_in = nn.Linear(cfg.state_dim, D)
        self.boa = nn.Parameter(torch.randn(D) * 0.02)
        self.action_in = nn.Linear(cfg.action_dim, D)
        self.action_pos = nn.Parameter(torch.randn(K, D) * 0.02)
        self.backbone = Backbone(D, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.rope_theta, cfg.dropout)
        self.frame_head = FrameHead(cfg.token_dim, cfg.camera_tokens, D, cfg.frame_head_width, cfg.frame_head_depth,
                                    cfg.head_num_heads, cfg.num_cameras)
        self.action_head = ActionHead(cfg.action_dim, K, D, cfg.action_head_width, cfg.action_head_depth, cfg.head_num_heads)
        self.diffusion = self._make_diffusion(cfg)
        self.value_head = ProgressHead(cfg.token_dim, cfg.frame_tokens, cfg.value_head_width) \
            if cfg.value_head_width else None
        self.perception_norm = Normalizer(cfg.perception_dim, "meanstd") if cfg.perception_dim else None
        self.perception_head = PerceptionHead(D, cfg.frame_tokens, cfg.perception_dim) if cfg.perception_dim else None
        self.locator = locator_from_dict(cfg.locator) if cfg.locator else None

    @staticmethod
    def _make_diffusion(cfg: PARConfig) -> Diffusion:
        return Diffusion(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type, cfg.sampler)

    # inference settings are read from the config, their one source; :meth:`set_runtime` changes them
    @property
    def num_inference_steps(self) -> int:
        return self.cfg.num_inference_steps

    @property
    def use_kv_cache(self) -> bool:
        return self.cfg.use_kv_cache

    def set_runtime(self, **changes) -> "PhysicalAutoregressiveModel":
        """Change settings that do not touch the weights (``config.RUNTIME_FIELDS``: ``num_inference_steps``,
        ``use_kv_cache``, ``sampler``, ``history``, ``evict_blocks``, ``best_of``), validated by the config; any other
        name is a ``TypeError``. Contexts started before keep their cache sizes: call it between episodes."""
        bad = sorted(set(changes) - set(RUNTIME_FIELDS))
        if bad:
            raise TypeError(f"unknown runtime settings {bad}; a built or loaded model may change only "
                            f"{list(RUNTIME_FIELDS)}")
        self.cfg = self.cfg.replace(**changes)
        if "sampler" in changes:
            self.diffusion = self._make_diffusion(self.cfg)
        return self

    @property
    def device(self) -> torch.device:
        return self.boa.device

    def attach_locator(self, locator: ObjectLocator) -> "PhysicalAutoregressiveModel":
        """Give the model an object locator (``par-locate``): from then on it is given frames and the plain
        state, and :meth:`complete_state` rebuilds the privileged fields it was fine-tuned with. Its
        recorded env then uses ``obs_mode="rgb"``."""
        if locator.cfg.full_dim != self.cfg.state_dim:
            raise ValueError(f"the locator rebuilds {locator.cfg.full_dim} state numbers; this model reads {self.cfg.state_dim}")
        env_kwargs = {**self.cfg.env_kwargs, "obs_mode": "rgb"}
        self.cfg = self.cfg.replace(locator=locator.cfg.to_dict(), env_kwargs=env_kwargs)
        self.locator = locator.to(self.device).eval()
        return self

    def complete_state(self, frames: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The state the backbone reads: ``state`` itself, or with a locator, (B, Dp) plain state and
        (B, H, W, 3) uint8 frames -> (B, state_dim) with the located objects' fields rebuilt."""
        return state if self.locator is None else self.locator.complete_state(frames, state)

    # ------------------------------------------------------------------ embeddings
    def embed_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., P, C) frame tokens -> (..., P, D)."""
        pos = frame_positions(self.frame_pos, self.camera_pos)
        return self.frame_in(tokens) + pos + self.kind_emb.weight[Kind.FRAME]

    def embed_state(self, state: torch.Tensor) -> torch.Tensor:
        """(..., Ds) raw state -> (..., 1, D)."""
        return (self.state_in(self.state_norm.normalize(state)) + self.kind_emb.weight[Kind.STATE]).unsqueeze(-2)

    def embed_boa(self, lead: tuple[int, ...]) -> torch.Tensor:
        """-> (*lead, 1, D)."""
        return (self.boa + self.kind_emb.weight[Kind.BOA]).expand(*lead, 1, -1)

    def embed_actions(self, actions_n: torch.Tensor) -> torch.Tensor:
        """(..., K, Da) normalised actions -> (..., 1+K, D) with BOA in front."""
        a = self.action_in(actions_n) + self.action_pos + self.kind_emb.weight[Kind.ACTION]
        return torch.cat([self.embed_boa(a.shape[:-2]), a], dim=-2)

    def embed_task(self, task: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, D)."""
        return (self.task_emb(task) + self.kind_emb.weight[Kind.PREFIX]).unsqueeze(1)

    def frame_tokens(self, batch: dict) -> torch.Tensor:
        """(B, T, P, C) frame tokens of a batch: given as ``frame_tokens`` or encoded from ``frames``."""
        if "frame_tokens" in batch:
            return batch["frame_tokens"].to(self.device, torch.float32)
        tok, frames = self.frame_tokenizer, batch["frames"].to(self.device)
        if torch.is_grad_enabled() and any(p.requires_grad for p in tok.encoder_parameters()):
            return tok.latents_to_tokens(tok.encode_latents(frames))  # an encoder in training (par-train --encoder-lr)
        with torch.no_grad():
            return tok.encode(frames)

    # ------------------------------------------------------------------ training
    def _run_window(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, dict, torch.Tensor]:
        """One backbone pass over a batch of windows.

        Returns frame tokens z (B, T, P, C), normalised actions (B, T-1, K, Da) or None, the
        layout indices of ``_window_indices`` and the backbone outputs h (B, L, D).
        """
        cfg, dev = self.cfg, self.device
        z = self.frame_tokens(batch)
        T = z.shape[1]
        if T < 2:
            raise ValueError(f"a training window needs at least 2 blocks, got {T}")
        a_n = self.action_norm.normalize(batch["actions"].to(dev, torch.float32)) if "actions" in batch else None
        has_s = "state" in batch
        spec = BlockSpec(cfg.frame_tokens, cfg.chunk_size, a_n is not None, has_s)
        idx = _window_indices(spec, T, dev)
        x = self._window_embeddings(batch, z, a_n, has_s)
        return z, a_n, idx, self.backbone(x, torch.arange(x.shape[1], device=dev), idx["mask"])

    def _window_embeddings(self, batch: dict, z: torch.Tensor, a_n: torch.Tensor | None, has_s: bool) -> torch.Tensor:
        """Input embeddings (B, L, D) of windows laid out as in ``masks.window_layout``."""
        dev, B = self.device, z.shape[0]
        task = batch.get("task_id", torch.zeros(B, dtype=torch.long)).to(dev).reshape(B)
        fe = self.embed_frames(z)  # (B, T, P, D)
        parts0, rest = [fe[:, 0]], [fe[:, 1:]]
        if a_n is not None:
            rest.append(self.embed_actions(a_n))
        if has_s:
            se = self.embed_state(batch["state"].to(dev, torch.float32))
            parts0.append(se[:, 0])
            rest.append(se[:, 1:])
        return torch.cat([self.embed_task(task), torch.cat(parts0, 1), torch.cat(rest, 2).flatten(1, 2)], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses for every block of a batch of windows in one backbone pass.

        batch:
            frames (B, T, H, W, 3) uint8 or frame_tokens (B, T, P, C)
            state (B, T, Ds) raw, optional; actions (B, T-1, K, Da) raw, optional (frames only = video pretraining)
            frame_mask (B, T) bool, action_mask (B, T-1, K) bool, task_id (B,) int64 (all optional)
            perception (B, T, Dp) raw, optional: the task state each observation shows (a model with a perception head)
        Returns: ``loss``, ``frame_loss``, (with actions) ``action_loss`` and (with perception targets)
        ``perception_loss``, scalars.
        """
        cfg, dev = self.cfg, self.device
        z, a_n, idx, h = self._run_window(batch)
        B, T = z.shape[:2]
        fmask = batch.get("frame_mask", torch.ones(B, T, dtype=torch.bool)).to(dev)

        # every (window, block) row is scored and the padding is weighted out by masks: selecting the valid
        # rows instead would make shapes depend on the data (a device->host sync per selection)
        mul = cfg.diffusion_batch_mul
        valid = (fmask[:, 1:] & fmask[:, :-1]).flatten()  # (B*(T-1),)
        cond = self.frame_head.prepare(h[:, idx["frame"][:-1]].flatten(0, 1), h[:, idx["last"][:-1]].flatten(0, 1))
        fweight = valid[:, None].expand(-1, cfg.frame_tokens)
        target = z[:, 1:].detach()  # the next frame's tokens; an encoder in training learns from its inputs only
        frame_loss = self.diffusion.loss(self.frame_head, target.flatten(0, 1).repeat(mul, 1, 1), repeat_cond(cond, mul),
                                         fweight.repeat(mul, 1))
        out = {"frame_loss": frame_loss, "loss": cfg.frame_loss_weight * frame_loss}
        if a_n is not None:
            amask = batch.get("action_mask", torch.ones(B, T - 1, cfg.chunk_size, dtype=torch.bool)).to(dev)
            amask = amask.flatten(0, 1) & valid[:, None]  # (B*(T-1), K)
            ctx_idx = torch.cat([idx["frame"][1:], idx["boa"][:, None]], dim=1)  # (T-1, P+1)
            cond = self.action_head.prepare(h[:, ctx_idx].flatten(0, 1), h[:, idx["boa"]].flatten(0, 1))
            action_loss = self.diffusion.loss(
                self.action_head, a_n.flatten(0, 1).repeat(mul, 1, 1), repeat_cond(cond, mul), amask.repeat(mul, 1)
            )
            out["action_loss"] = action_loss
            out["loss"] = out["loss"] + cfg.action_loss_weight * action_loss
        if self.perception_head is not None and "perception" in batch:
            target = self.perception_norm.normalize(batch["perception"].to(dev, torch.float32))
            perception_loss = self.perception_head.loss(h[:, idx["frame"]].flatten(0, 1), target.flatten(0, 1),
                                                        fmask.flatten())
            out["perception_loss"] = perception_loss
            out["loss"] = out["loss"] + cfg.perception_loss_weight * perception_loss
        return out

    @torch.no_grad()
    def read_perception(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The perception head's task state (B, T, Dp), raw units, for each observation of a batch of
        windows (teacher-forced, as in training; the batch as :meth:`forward` takes it)."""
        if self.perception_head is None:
            raise ValueError("this model has no perception head (trained without --perception-targets)")
        _, _, idx, h = self._run_window(batch)
        B, T = h.shape[0], idx["frame"].shape[0]
        return self.perception_norm.unnormalize(self.perception_head(h[:, idx["frame"]].flatten(0, 1))).view(B, T, -1)

    @torch.no_grad()
    def sample_window(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced predictions for every block of a window, in one backbone pass.

        Returns ``frame_tokens`` (B, T-1, P, C): F_{n+1} sampled from the real context up to
        block n; and, with actions, ``actions`` (B, T-1, K, Da) raw: A_n inferred from the real
        F_{n+1} (the inverse-kinematics read-out), both with the config's sampler.
        """
        cfg = self.cfg
        z, a_n, idx, h = self._run_window(batch)
        B, T = z.shape[:2]
        cond = self.frame_head.prepare(h[:, idx["frame"][:-1]].flatten(0, 1), h[:, idx["last"][:-1]].flatten(0, 1))
        x0 = self._noise((B * (T - 1), cfg.frame_tokens, cfg.token_dim), None, generator, 1.0)
        out = {"frame_tokens": self.diffusion.sample(self.frame_head, x0, cond, self.num_inference_steps).unflatten(0, (B, T - 1))}
        if a_n is not None:
            ctx_idx = torch.cat([idx["frame"][1:], idx["boa"][:, None]], dim=1)
            cond = self.action_head.prepare(h[:, ctx_idx].flatten(0, 1), h[:, idx["boa"]].flatten(0, 1))
            x0 = self._noise((B * (T - 1), cfg.chunk_size, cfg.action_dim), None, generator, 1.0)
            a = self.diffusion.sample(self.action_head, x0, cond, self.num_inference_steps).clamp(-1, 1)
            out["actions"] = self.action_norm.unnormalize(a).unflatten(0, (B, T - 1))
        return out

    # ------------------------------------------------------------------ inference
    def _meta(self, st: InferenceState, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block index and kind of every token of the context (+ extra block), on the model's device."""
        block, kind = self._meta_cpu(st, extra)
        return block.to(self.device), kind.to(self.device)

    def _run(self, st: InferenceState, emb: torch.Tensor | None = None, kinds: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone outputs of a new block appended to the context, or (emb None) of the last real
        block after (re)filling the cache from the whole context. With the cache the new block
        stays in it; call ``st.cache.rollback`` to take it back."""
        full = emb is None or st.cache is None
        block, kind = self._meta(st, kinds)
        pos = torch.arange(len(block), device=self.device)
        if full:
            parts = [self.embed_task(st.task)] + st.blocks + ([emb] if emb is not None else [])
            x = torch.cat(parts, dim=1)
            if st.cache is not None:
                st.cache.reset()
            h = self.backbone(x, pos, ik_attention_mask(block, kind, pos, block, kind, pos), st.cache)
            n = emb.shape[1] if emb is not None else st.blocks[-1].shape[1]
            return h[:, -n:]
        n = emb.shape[1]
        q = slice(len(block) - n, None)
        mask = ik_attention_mask(block[q], kind[q], pos[q], block, kind, pos)
        return self.backbone(emb, pos[q], mask, st.cache)

    def _block(self, frames: torch.Tensor, state: torch.Tensor, actions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, D) and kinds (L,) of a real block [F (BOA A) S]."""
        parts, kinds = [self.embed_frames(self.frame_tokenizer.encode(frames.to(self.device)))], [Kind.FRAME] * self.cfg.frame_tokens
        if actions is not None:
            parts.append(self.embed_actions(self.action_norm.normalize(actions.to(self.device, torch.float32))))
            kinds += [Kind.BOA] + [Kind.ACTION] * self.cfg.chunk_size
        parts.append(self.embed_state(state.to(self.device, torch.float32)))
        kinds.append(Kind.STATE)
        return torch.cat(parts, dim=1), torch.tensor([int(k) for k in kinds])

    @torch.no_grad()
    def start(self, task: torch.Tensor, frames: torch.Tensor, state: torch.Tensor) -> InferenceState:
        """New context from the first observation. task (B,), frames (B, H, W, 3) uint8, state (B, Ds)."""
        task = task.to(self.device).reshape(-1)
        st = InferenceState(task=task)
        if self.use_kv_cache:
            cfg = self.cfg
            max_len = 1 + cfg.history * (cfg.frame_tokens + cfg.chunk_size + 2)
            st.cache = self.backbone.new_cache(len(task), max_len, self.device, self.boa.dtype)
        emb, kinds = self._block(frames, state, None)
        st.blocks, st.kinds = [emb], [kinds]
        st.hidden = self._run(st)
        return st

    def _noise(self, shape: tuple[int, ...], noise, generator, temperature: float) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device if generator is not None else self.device)
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
        return noise.to(self.device) * temperature

    def frame_noise_shape(self, batch: int) -> tuple[int, ...]:
        """The initial noise of ``batch`` imagined frames: (B, P, C), or (B, N, P, C) with ``best_of`` N > 1."""
        cfg = self.cfg
        return (batch, cfg.frame_tokens, cfg.token_dim) if cfg.best_of == 1 else \
            (batch, cfg.best_of, cfg.frame_tokens, cfg.token_dim)

    def _imagine(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The next frame's tokens (R, P, C) from the last real block's outputs ``hidden`` (R, L, D),
        from ``noise`` (R, P, C), or (R, N, P, C) for best-of-N: the N imagined frames of a row are
        sampled in one batch and the one the value head scores highest is kept."""
        P, R = self.cfg.frame_tokens, hidden.shape[0]
        noise = noise.reshape(R, -1, P, noise.shape[-1])
        n = noise.shape[1]
        h = hidden.repeat_interleave(n, dim=0) if n > 1 else hidden
        cond = self.frame_head.prepare(h[:, :P], h[:, -1])  # a block starts with its P frame tokens
        f = self.diffusion.sample(self.frame_head, noise.flatten(0, 1), cond, self.num_inference_steps)
        if n == 1:
            return f
        best = self.value_head(f).view(R, n).argmax(dim=1)
        return f.view(R, n, P, -1)[torch.arange(R, device=f.device), best]

    @torch.no_grad()
    def predict_frame(self, st: InferenceState, noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Sample the next frame's tokens (B, P, C) from the last real block; with ``best_of`` N > 1,
        the best-scored of N imagined frames (``noise`` is then (B, N, P, C))."""
        x0 = self._noise(self.frame_noise_shape(st.batch_size), noise, generator, temperature)
        return self._imagine(st.hidden, x0)

    @torch.no_grad()
    def progress(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """The value head's progress (B,) in [0, 1] of frames given as tokens (B, P, C)."""
        if self.value_head is None:
            raise ValueError("this model has no value head (value_head_width=0): train one with `par-train value`")
        return self.value_head(frame_tokens.to(self.device))

    @torch.no_grad()
    def predict_actions(self, st: InferenceState, frame_tokens: torch.Tensor, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Sample the action chunk (B, K, Da), raw units, that leads to the imagined frame (B, P, C)."""
        cfg = self.cfg
        emb = torch.cat([self.embed_frames(frame_tokens.to(self.device)), self.embed_boa((st.batch_size,))], dim=1)
        kinds = torch.tensor([int(Kind.FRAME)] * cfg.frame_tokens + [int(Kind.BOA)])
        h = self._run(st, emb, kinds)
        if st.cache is not None:
            st.cache.rollback(emb.shape[1])
        cond = self.action_head.prepare(h, h[:, -1])
        x0 = self._noise((st.batch_size, cfg.chunk_size, cfg.action_dim), noise, generator, temperature)
        a = self.diffusion.sample(self.action_head, x0, cond, self.num_inference_steps).clamp(-1, 1)
        return self.action_norm.unnormalize(a)

    @torch.no_grad()
    def commit(self, st: InferenceState, actions: torch.Tensor, frames: torch.Tensor, state: torch.Tensor) -> None:
        """Append the real block: the executed chunk (B, K, Da) raw, and the observation it led to."""
        emb, kinds = self._block(frames, state, actions)
        st.steps += 1
        if st.num_blocks + 1 >= self.cfg.history:  # no room left for the next imagined block
            self._evict(st, emb, kinds)
            st.hidden = self._run(st)
        else:
            st.hidden = self._run(st, emb, kinds)
            st.blocks.append(emb)
            st.kinds.append(kinds)

    def _evict(self, st: InferenceState, emb: torch.Tensor, kinds: torch.Tensor) -> None:
        """Append the real block (emb, kinds), drop the ``eviction`` oldest blocks and cut the first one
        left back to [F S], so the context looks like a training window (its cache is then refilled)."""
        ev = self.cfg.eviction
        st.blocks, st.kinds = (st.blocks + [emb])[ev:], (st.kinds + [kinds])[ev:]
        first, k = st.blocks[0], st.kinds[0]
        if Kind.BOA in k.tolist():  # [F BOA A S] -> [F S]: the frames lead a block, the state ends it (host-side kinds)
            P = self.cfg.frame_tokens
            st.blocks[0], st.kinds[0] = torch.cat([first[:, :P], first[:, -1:]], dim=1), torch.cat([k[:P], k[-1:]])

    @torch.no_grad()
    def act(self, st: InferenceState, generator: torch.Generator | None = None,
            temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagine the next frame, then infer the chunk. Returns (actions (B, K, Da), frame tokens (B, P, C))."""
        f = self.predict_frame(st, generator=generator, temperature=temperature)
        return self.predict_actions(st, f, generator=generator, temperature=temperature), f

    # ------------------------------------------------------------------ many episodes in one call
    # The functions below take a list of contexts, one episode each (batch 1), whose lengths may
    # differ (episodes reset at different times), and serve them with one backbone call: the policy's
    # path for many envs. Row r's tokens are right-aligned behind padding, keep their own positions
    # (so the rotary phases are those of a call for that context alone) and the padding is masked.

    def _run_rows(self, states: list[InferenceState], emb: torch.Tensor | None = None,
                  kinds: torch.Tensor | None = None, keep: bool = True) -> list[torch.Tensor]:
        """Append the block ``emb`` (R, n, D) of kinds (n,) to every context and return its outputs, one
        (1, n, D) per context; with ``keep`` the block stays in each context's cache. Without ``emb``:
        recompute every context from its blocks (refilling its cache) and return the outputs of each
        one's last real block. Uncached contexts are always recomputed whole, as :meth:`_run` does."""
        dev, R = self.device, len(states)
        full = emb is None or states[0].cache is None
        xs, old = [], []
        for r, st in enumerate(states):
            extra = [emb[r:r + 1]] if emb is not None else []
            xs.append(torch.cat([self.embed_task(st.task)] + st.blocks + extra, dim=1) if full else extra[0])
            old.append(0 if full else st.cache.length)
        new = [x.shape[1] for x in xs]
        n, Mo = max(new), max(old)
        x = torch.cat([nn.functional.pad(xi, (0, 0, n - ni, 0)) for xi, ni in zip(xs, new)])  # (R, n, D)
        pos = torch.zeros(R, n, dtype=torch.long)
        mask = torch.zeros(R, n, Mo + n, dtype=torch.bool)
        for r, st in enumerate(states):
            block, kind = self._meta_cpu(st, kinds if emb is not None else None)
            p = torch.arange(len(block))
            q = slice(old[r], None)
            keys = torch.cat([torch.arange(Mo - old[r], Mo), torch.arange(Mo + n - new[r], Mo + n)])
            pos[r, n - new[r]:] = p[q]
            mask[r, n - new[r]:][:, keys] = ik_attention_mask(block[q], kind[q], p[q], block, kind, p)
            pad = torch.arange(n - new[r])
            mask[r, pad, Mo + pad] = True  # a padding query sees itself only (its output is dropped)
        cache = None
        if states[0].cache is not None:
            c0 = states[0].cache
            cache = KVCache(c0.k.shape[0], R, c0.k.shape[2], Mo + n, c0.k.shape[4], dev, c0.k.dtype)
            for r, st in enumerate(states):
                if not full:
                    cache.k[:, r, :, Mo - old[r]:Mo] = st.cache.k[:, 0, :, :old[r]]
                    cache.v[:, r, :, Mo - old[r]:Mo] = st.cache.v[:, 0, :, :old[r]]
            cache.length = Mo
        h = self.backbone(x, pos.to(dev), mask.to(dev), cache)
        if cache is not None and keep:
            for r, st in enumerate(states):
                src = slice(Mo + n - new[r], Mo + n)
                st.cache.length = old[r]
                st.cache.k[:, 0, :, old[r]:old[r] + new[r]] = cache.k[:, r, :, src]
                st.cache.v[:, 0, :, old[r]:old[r] + new[r]] = cache.v[:, r, :, src]
                st.cache.advance(new[r])
        if emb is not None:
            return [h[r:r + 1, n - emb.shape[1]:] for r in range(R)]
        return [h[r:r + 1, n - len(st.kinds[-1]):] for r, st in enumerate(states)]

    @staticmethod
    def _meta_cpu(st: InferenceState, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block index (-1 for the prefix) and kind of every token of a context (+ extra block), on the host."""
        kinds = [torch.tensor([int(Kind.PREFIX)])] + st.kinds + ([extra] if extra is not None else [])
        return torch.cat([torch.full((len(k),), i - 1) for i, k in enumerate(kinds)]), torch.cat(kinds)

    def _new_cache(self) -> KVCache:
        cfg = self.cfg
        return self.backbone.new_cache(1, 1 + cfg.history * (cfg.frame_tokens + cfg.chunk_size + 2), self.device,
                                       self.boa.dtype)

    @torch.no_grad()
    def start_many(self, task: torch.Tensor, frames: torch.Tensor, state: torch.Tensor) -> list[InferenceState]:
        """One context per row, from a batch of first observations. task (R,), frames (R, H, W, 3) uint8,
        state (R, Ds)."""
        task = task.to(self.device).reshape(-1)
        emb, kinds = self._block(frames, state, None)
        states = [InferenceState(task=task[r:r + 1], blocks=[emb[r:r + 1]], kinds=[kinds],
                                 cache=self._new_cache() if self.use_kv_cache else None) for r in range(len(task))]
        for st, h in zip(states, self._run_rows(states)):
            st.hidden = h
        return states

    @torch.no_grad()
    def act_many(self, states: list[InferenceState], frame_noise: torch.Tensor,
                 action_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`act` for R contexts in one call, from the given initial noise (R, P, C) (or (R, N, P, C)
        with ``best_of`` N) and (R, K, Da). Returns actions (R, K, Da) raw and the imagined frame tokens (R, P, C)."""
        P = self.cfg.frame_tokens
        want = self.frame_noise_shape(len(states))
        if tuple(frame_noise.shape) != want:
            raise ValueError(f"frame_noise must have shape {want} (best_of={self.cfg.best_of}), got {tuple(frame_noise.shape)}")
        # every context's last block: the hidden states of its P frame tokens ... its state token
        f = self._imagine(torch.cat([torch.cat([st.hidden[:, :P], st.hidden[:, -1:]], dim=1) for st in states]),
                          frame_noise.to(self.device))
        emb = torch.cat([self.embed_frames(f), self.embed_boa((len(states),))], dim=1)
        kinds = torch.tensor([int(Kind.FRAME)] * P + [int(Kind.BOA)])
        h = torch.cat(self._run_rows(states, emb, kinds, keep=False))
        cond = self.action_head.prepare(h, h[:, -1])
        a = self.diffusion.sample(self.action_head, action_noise.to(self.device), cond, self.num_inference_steps)
        return self.action_norm.unnormalize(a.clamp(-1, 1)), f

    @torch.no_grad()
    def commit_many(self, states: list[InferenceState], actions: torch.Tensor, frames: torch.Tensor,
                    state: torch.Tensor) -> None:
        """:meth:`commit` for R contexts in one call: actions (R, K, Da) raw, frames (R, H, W, 3), state (R, Ds).
        Contexts that are full drop ``eviction`` blocks and are recomputed (together, in a second call)."""
        emb, kinds = self._block(frames, state, actions)
        full = [r for r, st in enumerate(states) if st.num_blocks + 1 >= self.cfg.history]
        rest = [r for r in range(len(states)) if r not in set(full)]
        for r in full:
            self._evict(states[r], emb[r:r + 1], kinds)
        if rest:
            idx = torch.tensor(rest, device=emb.device)
            for r, h in zip(rest, self._run_rows([states[r] for r in rest], emb[idx], kinds)):
                states[r].hidden = h
                states[r].blocks.append(emb[r:r + 1])
                states[r].kinds.append(kinds)
        if full:
            for r, h in zip(full, self._run_rows([states[r] for r in full])):
                states[r].hidden = h
        for st in states:
            st.steps += 1

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            "frame_tokenizer": count(self.frame_tokenizer),
            "backbone": count(self.backbone),
            "frame_head": count(self.frame_head),
            "action_head": count(self.action_head),
        }
        parts["total"] = count(self)
        parts["embeddings"] = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        return parts

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder, extra: dict | None = None, dtype: torch.dtype | None = None):
        """Write ``config.json`` + ``model.safetensors`` (tokenizer and statistics included)."""
        from par_agent.hub import save_checkpoint

        return save_checkpoint(self, self.cfg, folder, extra=extra, dtype=dtype)

    @classmethod
    def from_pretrained(cls, name_or_path, device: str | torch.device = "cpu", **overrides) -> "PhysicalAutoregressiveModel":
        """Rebuild from a checkpoint folder (built-in name, local folder or hub id), in eval mode.

        ``overrides`` replace config fields that do not change the weights (``config.RUNTIME_FIELDS``:
        ``num_inference_steps``, ``use_kv_cache``, ``sampler``, ``history``, ``evict_blocks``, ``best_of``), through
        :meth:`set_runtime` (any other name is a ``TypeError``, raised before the weights are read).
        """
        from par_agent.device import resolve_device
        from par_agent.hub import load_state, read_checkpoint, resolve

        device = resolve_device(device)
        folder = resolve(name_or_path)
        cfg, state, _ = read_checkpoint(folder)
        model = cls(cfg).set_runtime(**overrides)
        load_state(model, state, folder)
        return model.to(device).eval()
