"""PhysicalAutoregressiveModel: physical tokens in, frame and action diffusion losses out
(parallel training), and the imagine-then-act inference loop over many episodes at once.

Training (one forward for a whole window of T blocks, see ``masks.py`` for the layout):
    frame loss:  F_{n+1} denoised from the outputs of block n     (n = 0..T-2)
    action loss: A_n denoised from the outputs of [F_{n+1}, BOA]   (n = 0..T-2)

Inference (one path, ``context.py``: contexts of different lengths in fixed buffers)::

    ctx = model.new_contexts(n_envs)                   # allocated once (KV cache included)
    model.start(ctx, rows, task, frames_0, state_0)    # prefill [TASK][F_0 S_0] of those envs
    loop:
        actions, imagined = model.act(ctx, rows, frame_noise, action_noise)   # imagine F_{n+1}, then A_n
        ... execute, observe o_{n+1} ...
        model.commit(ctx, rows, actions, frames, state)                        # append [F BOA A S]

``rows`` are the envs served by a call; their contexts may have any lengths. Lockstep is the case
where every row is served at every call; ``use_kv_cache=False`` runs the same calls recomputing
each context from its stored embeddings. The context holds at most ``history`` blocks; when it is
full, ``eviction`` blocks are dropped at once, the first remaining block is cut back to [F S] and
the context is recomputed, so it always looks like a training window.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

import torch
from torch import nn

from par_agent.config import RUNTIME_FIELDS, PARConfig
from par_agent.models.heads import ActionHead, BinnedActions, Diffusion, FrameHead, camera_rows, frame_positions, repeat_cond
from par_agent.models.context import ContextLayout, Contexts
from par_agent.models.masks import BlockSpec, Kind, attention_mask, window_layout
from par_agent.models.normalizer import Normalizer
from par_agent.models.transformer import Backbone, CacheView
from par_agent.tokenizers.frames import FrameTokenizer


@lru_cache(maxsize=64)
def _window_indices(spec: BlockSpec, num_blocks: int, device: torch.device = torch.device("cpu"),
                    mask: str = "ik") -> dict[str, torch.Tensor]:
    """Positions of the tokens the heads read, and the attention mask, for a training window: made once
    per layout and device, so a training step copies nothing from the host."""
    block, kind = window_layout(spec, num_blocks)
    pos = torch.arange(len(block))
    frame = torch.stack([pos[(block == n) & (kind == Kind.FRAME)] for n in range(num_blocks)])
    last = torch.stack([pos[block == n][-1] for n in range(num_blocks)])
    out = {"block": block, "kind": kind, "frame": frame, "last": last,
           "mask": attention_mask(mask, block, kind, pos, block, kind, pos)}
    if spec.has_actions and num_blocks > 1:
        out["boa"] = torch.stack([pos[(block == n) & (kind == Kind.BOA)][0] for n in range(1, num_blocks)])
    return {k: v.to(device) for k, v in out.items()}


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
        self.action_head = ActionHead(cfg.action_dim, K, D, cfg.action_head_width, cfg.action_head_depth, cfg.head_num_heads,
                                      out_dim=cfg.action_dim * cfg.action_bins if cfg.action_bins else None)
        self.diffusion = self._make_diffusion(cfg)

    @property
    def action_decoder(self) -> Diffusion | BinnedActions:
        """How actions are read off the action head: the diffusion (every shipped checkpoint), or the
        discrete ablation's bins (``PARConfig.action_bins``)."""
        return BinnedActions(self.cfg.action_bins, self.cfg.action_dim) if self.cfg.action_bins else self.diffusion

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
        ``use_kv_cache``, ``sampler``, ``history``, ``evict_blocks``), validated by the config; any other
        name is a ``TypeError``. Contexts made before keep their sizes: make new ones (``new_contexts``)."""
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

    def compile_heads(self, mode: str = "default") -> "PhysicalAutoregressiveModel":
        """Compile the frame and action heads' forward (``torch.compile``, static shapes): they run
        ``num_inference_steps`` times per chunk on shapes fixed by the number of envs served, so
        inductor fuses their small ops (CPU: a chunk 27% faster after about a minute of compiling;
        ``mode="reduce-overhead"`` replays them as CUDA graphs on a GPU). Weights and state-dict keys
        are unchanged."""
        for head in (self.frame_head, self.action_head):
            head.forward = torch.compile(head.forward, mode=mode, dynamic=False)
        return self

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
        with torch.no_grad():
            return self.frame_tokenizer.encode(batch["frames"].to(self.device))

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
        idx = _window_indices(spec, T, dev, self.cfg.attention_mask)
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
        Returns: ``loss``, ``frame_loss`` and (with actions) ``action_loss``, scalars.
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
        target = z[:, 1:]  # the next frame's tokens
        frame_loss = self.diffusion.loss(self.frame_head, target.flatten(0, 1).repeat(mul, 1, 1), repeat_cond(cond, mul),
                                         fweight.repeat(mul, 1))
        out = {"frame_loss": frame_loss, "loss": cfg.frame_loss_weight * frame_loss}
        if a_n is not None:
            amask = batch.get("action_mask", torch.ones(B, T - 1, cfg.chunk_size, dtype=torch.bool)).to(dev)
            amask = amask.flatten(0, 1) & valid[:, None]  # (B*(T-1), K)
            ctx_idx = torch.cat([idx["frame"][1:], idx["boa"][:, None]], dim=1)  # (T-1, P+1)
            cond = self.action_head.prepare(h[:, ctx_idx].flatten(0, 1), h[:, idx["boa"]].flatten(0, 1))
            action_loss = self.action_decoder.loss(
                self.action_head, a_n.flatten(0, 1).repeat(mul, 1, 1), repeat_cond(cond, mul), amask.repeat(mul, 1)
            )
            out["action_loss"] = action_loss
            out["loss"] = out["loss"] + cfg.action_loss_weight * action_loss
        return out

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise of ``shape`` drawn where ``generator`` lives, on the model's device."""
        dev = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=dev).to(self.device)

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
        x0 = self._noise((B * (T - 1), cfg.frame_tokens, cfg.token_dim), generator)
        out = {"frame_tokens": self.diffusion.sample(self.frame_head, x0, cond, self.num_inference_steps).unflatten(0, (B, T - 1))}
        if a_n is not None:
            ctx_idx = torch.cat([idx["frame"][1:], idx["boa"][:, None]], dim=1)
            cond = self.action_head.prepare(h[:, ctx_idx].flatten(0, 1), h[:, idx["boa"]].flatten(0, 1))
            x0 = self._noise((B * (T - 1), cfg.chunk_size, cfg.action_dim), generator)
            a = self.action_decoder.sample(self.action_head, x0, cond, self.num_inference_steps).clamp(-1, 1)
            out["actions"] = self.action_norm.unnormalize(a).unflatten(0, (B, T - 1))
        return out

    # ------------------------------------------------------------------ inference
    @property
    def context_layout(self) -> ContextLayout:
        cfg = self.cfg
        return ContextLayout(cfg.frame_tokens, cfg.chunk_size, cfg.history, cfg.eviction, cfg.attention_mask)

    def new_contexts(self, n: int) -> Contexts:
        """Room for ``n`` episode contexts (one per env), with a KV cache when ``use_kv_cache``."""
        layout, dev, dtype = self.context_layout, self.device, self.boa.dtype
        cache = self.backbone.new_cache(n, layout.max_len, dev, dtype) if self.use_kv_cache else None
        return Contexts(n, layout, self.cfg.width, cache, dev, dtype)

    def _slots(self, start, n: int) -> torch.Tensor:
        """(R, n) slots start[r] .. start[r]+n-1 of each row, on the model's device."""
        return torch.as_tensor(np.asarray(start, dtype=np.int64)[:, None] + np.arange(n), device=self.device)

    def _rows(self, rows) -> torch.Tensor:
        return torch.as_tensor(list(rows), device=self.device)

    def _run(self, ctx: Contexts, rows: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Write tokens x (R, n, D) of contexts ``rows`` (R,) to their ``slots`` (R, n) and return their
        backbone outputs (R, n, D). With the cache only these tokens run; without it each row's whole
        context does (the same numbers up to float rounding). Device work only: no host sync."""
        ctx.emb[rows[:, None], slots] = x
        if ctx.cache is not None:
            return self.backbone(x, slots, ctx.mask[slots], CacheView(ctx.cache, rows, slots))
        M = ctx.layout.max_len
        h = self.backbone(ctx.emb[rows], torch.arange(M, device=x.device), ctx.mask)
        return h[torch.arange(len(rows), device=x.device)[:, None], slots]

    def _block(self, frames: torch.Tensor, state: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """Embeddings (R, L, D) of real blocks [F (BOA A) S]: frames (R, H, W, 3) uint8, state (R, Ds) raw,
        actions (R, K, Da) raw or None (a first block)."""
        parts = [self.embed_frames(self.frame_tokenizer.encode(frames.to(self.device)))]
        if actions is not None:
            parts.append(self.embed_actions(self.action_norm.normalize(actions.to(self.device, torch.float32))))
        parts.append(self.embed_state(state.to(self.device, torch.float32)))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def start(self, ctx: Contexts, rows: list[int], task: torch.Tensor, frames: torch.Tensor,
              state: torch.Tensor) -> None:
        """(Re)start the contexts ``rows`` from their first observation: task (R,), frames (R, H, W, 3)
        uint8, state (R, Ds)."""
        x = torch.cat([self.embed_task(task.to(self.device).reshape(-1)), self._block(frames, state, None)], dim=1)
        ctx.reset(rows)
        rows_t = self._rows(rows)
        h = self._run(ctx, rows_t, self._slots(np.zeros(len(rows)), x.shape[1]), x)
        ctx.hidden[rows_t] = h[:, 1:]
        ctx.blocks[rows] = 1

    @torch.no_grad()
    def imagine(self, ctx: Contexts, rows: list[int], noise: torch.Tensor) -> torch.Tensor:
        """The next frame's tokens (R, P, C) of each context ``rows``, sampled from noise (R, P, C) by the
        frame head off the last real block's outputs (the world model alone; :meth:`act` does this first)."""
        cfg = self.cfg
        want = (len(rows), cfg.frame_tokens, cfg.token_dim)
        if tuple(noise.shape) != want:
            raise ValueError(f"frame noise must have shape {want}, got {tuple(noise.shape)}")
        if not ctx.started(rows).all():
            raise ValueError(f"contexts {[r for r in rows if not ctx.blocks[r]]} were not started (model.start)")
        return self._imagine(ctx, self._rows(rows), noise.to(self.device))

    def _imagine(self, ctx: Contexts, rows: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """:meth:`imagine`'s device work: rows (R,) on the device, noise (R, P, C)."""
        hidden = ctx.hidden[rows]
        cond = self.frame_head.prepare(hidden[:, :-1], hidden[:, -1])
        return self.diffusion.sample(self.frame_head, noise, cond, self.num_inference_steps)

    @torch.no_grad()
    def act(self, ctx: Contexts, rows: list[int], frame_noise: torch.Tensor,
            action_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagine the next frame of each context ``rows``, then infer the chunk that leads there, from the
        initial noise (R, P, C) and (R, K, Da). Returns actions (R, K, Da) raw and the imagined frame
        tokens (R, P, C). The imagined block [F^ BOA] is written after each context's end and overwritten
        by :meth:`commit`."""
        cfg, R = self.cfg, len(rows)
        want = (R, cfg.chunk_size, cfg.action_dim)
        if tuple(action_noise.shape) != want:
            raise ValueError(f"action noise must have shape {want}, got {tuple(action_noise.shape)}")
        f = self.imagine(ctx, rows, frame_noise)  # checks the frame noise and that the rows started
        slots = self._slots(ctx.ends(rows), self.cfg.frame_tokens + 1)
        return self._act(ctx, self._rows(rows), slots, f, action_noise.to(self.device))

    def _act(self, ctx: Contexts, rows: torch.Tensor, slots: torch.Tensor, f: torch.Tensor,
             action_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`act`'s device work after the imagined frame tokens f (R, P, C): the imagined block
        [F^ BOA] at ``slots`` (R, P+1), then the action head. Returns (actions raw, f)."""
        x = torch.cat([self.embed_frames(f), self.embed_boa((len(f),))], dim=1)
        h = self._run(ctx, rows, slots, x)
        cond = self.action_head.prepare(h, h[:, -1])
        a = self.action_decoder.sample(self.action_head, action_noise, cond, self.num_inference_steps)
        return self.action_norm.unnormalize(a.clamp(-1, 1)), f

    @torch.no_grad()
    def commit(self, ctx: Contexts, rows: list[int], actions: torch.Tensor, frames: torch.Tensor,
               state: torch.Tensor) -> None:
        """Append the real block of each context ``rows``: the executed chunk (R, K, Da) raw and the
        observation it led to, frames (R, H, W, 3) and state (R, Ds). Contexts that become full drop
        ``eviction`` blocks and are recomputed (together, in a second call)."""
        layout, dev = ctx.layout, self.device
        rows = list(rows)
        if not ctx.started(rows).all():
            raise ValueError(f"contexts {[r for r in rows if not ctx.blocks[r]]} were not started (model.start)")
        x = self._block(frames, state, actions)
        full = [j for j, r in enumerate(rows) if ctx.blocks[r] + 1 >= layout.history]
        rest = [j for j, r in enumerate(rows) if ctx.blocks[r] + 1 < layout.history]
        if rest:
            rr = [rows[j] for j in rest]
            self._append(ctx, self._rows(rr), self._slots(ctx.ends(rr), x.shape[1]), x[rest])
            ctx.blocks[rr] += 1
        if full:
            rf = [rows[j] for j in full]
            rf_t = torch.as_tensor(rf, device=dev)
            end = layout.length(layout.history)
            ctx.emb[rf_t, end - layout.block_len:end] = x[full]  # the new block, then drop the oldest
            kept = ctx.emb[rf_t][:, torch.as_tensor(layout.evicted_slots(), device=dev)]
            h = self._run(ctx, rf_t, self._slots(np.zeros(len(rf)), kept.shape[1]), kept)
            blocks = layout.history - layout.eviction
            ctx.hidden[rf_t] = h[:, torch.as_tensor(layout.last_block_slots(blocks), device=dev)]
            ctx.blocks[rf] = blocks
        ctx.steps[rows] += 1

    def _append(self, ctx: Contexts, rows: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
        """:meth:`commit`'s device work for contexts that stay below ``history``: the real blocks x
        (R, L, D) at ``slots`` (R, L); their last frame and state outputs become ``ctx.hidden``."""
        P = self.cfg.frame_tokens
        h = self._run(ctx, rows, slots, x)
        ctx.hidden[rows] = torch.cat([h[:, :P], h[:, -1:]], dim=1)

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
        ``num_inference_steps``, ``use_kv_cache``, ``sampler``, ``history``, ``evict_blocks``), through
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
