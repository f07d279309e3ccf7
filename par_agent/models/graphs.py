"""A chunk's device work captured once as CUDA graphs: the inference path without its launch costs.

On a GPU a chunk of the shipped size is a few hundred small kernels (the frame head's and the action
head's sampling steps, the backbone on [F^ BOA] and on the committed block), so its time is launch
overhead, not arithmetic. :class:`ChunkGraphs` records :meth:`~PhysicalAutoregressiveModel.act` and
the append part of :meth:`~PhysicalAutoregressiveModel.commit` for all ``n`` contexts of one
:class:`~par_agent.models.context.Contexts` as two CUDA graphs, over static input buffers, and
replays them. Which slots a call writes is the only thing that changes between chunks: it is copied
into a static buffer before each replay, and the fixed (M, M) mask, the KV cache and the contexts'
buffers are the ones the eager path uses, so both paths read and write the same state and can be
mixed freely. Calls the graphs do not cover (a subset of the envs, a commit that evicts, a start)
go to the model's eager methods.

On the CPU there is no capture: the same static-buffer bodies run eagerly, or compiled whole by
inductor (``compile=True``; static shapes, the sampler being plain arithmetic, so each body is one
graph, with inductor's C++ wrapper); the tests compare both with the eager calls there.
"""
from __future__ import annotations

from typing import Callable

import torch

from par_agent.models.context import Contexts


class ChunkGraphs:
    """``model.act`` and the non-evicting ``model.commit`` of every context of ``ctx`` at once.

    ``ctx`` must be fresh (``model.new_contexts(n)``, no context started): capturing runs each body a
    few times, which writes to its buffers. Use :meth:`act` when every context has started, and
    :meth:`commit`, which returns False without doing anything when the commit would fill a context
    (then call ``model.commit``, which evicts).
    """

    def __init__(self, model, ctx: Contexts, warmup: int = 2, compile: bool = False) -> None:
        if ctx.blocks.any():
            raise ValueError("ChunkGraphs must be captured on fresh contexts (model.new_contexts(n)): "
                             "capturing writes to their buffers")
        if ctx.layout.history < 2:
            raise ValueError(f"ChunkGraphs needs a history of at least 2 blocks, got {ctx.layout.history}")
        cfg, dev, n, layout = model.cfg, model.device, len(ctx), ctx.layout
        self.model, self.ctx = model, ctx
        self.rows = torch.arange(n, device=dev)
        first = layout.length(1)  # any valid slots serve the capture
        self.act_slots = first + torch.arange(cfg.frame_tokens + 1, device=dev).repeat(n, 1)
        self.commit_slots = first + torch.arange(layout.block_len, device=dev).repeat(n, 1)
        self.frame_noise = torch.zeros(n, cfg.frame_tokens, cfg.token_dim, device=dev)
        self.action_noise = torch.zeros(n, cfg.chunk_size, cfg.action_dim, device=dev)
        self.frames = torch.zeros(n, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8, device=dev)
        self.state = torch.zeros(n, cfg.state_dim, device=dev)
        self.actions = torch.zeros(n, cfg.chunk_size, cfg.action_dim, device=dev)
        self.captured = dev.type == "cuda"
        self.compiled = compile and not self.captured
        model.action_decoder.steps(cfg.num_inference_steps)  # the sampler's weights, read before any trace
        model.diffusion.steps(cfg.num_inference_steps)
        self._act = self._capture(self._act_body, warmup)
        self._commit = self._capture(self._commit_body, warmup)

    # ------------------------------------------------------------------ bodies (device work only)
    def _act_body(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        f = m._imagine(self.ctx, self.rows, self.frame_noise)
        return m._act(self.ctx, self.rows, self.act_slots, f, self.action_noise)

    def _commit_body(self) -> None:
        m = self.model
        m._append(self.ctx, self.rows, self.commit_slots, m._block(self.frames, self.state, self.actions))

    @torch.no_grad()
    def _capture(self, body: Callable, warmup: int) -> Callable:
        """``body`` itself (or compiled, ``compile=True``) on the CPU; on CUDA a function replaying its
        graph and returning its (static) outputs."""
        if not self.captured:
            # cpp_wrapper: inductor's glue between kernels in C++, not Python; a chunk is a few hundred
            # small kernels, so the Python wrapper's per-call cost was about a tenth of a compiled chunk
            return torch.compile(body, dynamic=False, options={"cpp_wrapper": True}) if self.compiled else body
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
            for _ in range(warmup):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = body()

        def replay():
            graph.replay()
            return out
        return replay

    # ------------------------------------------------------------------ calls
    @torch.no_grad()
    def act(self, frame_noise: torch.Tensor, action_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``model.act(ctx, all rows, frame_noise, action_noise)``: actions (n, K, Da) raw and the
        imagined frame tokens (n, P, C), as new tensors."""
        if not self.ctx.started(slice(None)).all():
            raise ValueError("ChunkGraphs.act serves every context at once: start them all first (model.start)")
        if frame_noise.shape != self.frame_noise.shape or action_noise.shape != self.action_noise.shape:
            raise ValueError(f"noise must have shapes {tuple(self.frame_noise.shape)} and "
                             f"{tuple(self.action_noise.shape)}, got {tuple(frame_noise.shape)} and "
                             f"{tuple(action_noise.shape)}")
        self.act_slots.copy_(self.model._slots(self.ctx.ends(slice(None)), self.act_slots.shape[1]))
        self.frame_noise.copy_(frame_noise)
        self.action_noise.copy_(action_noise)
        actions, f = self._act()
        return actions.clone(), f.clone()

    @torch.no_grad()
    def commit(self, actions: torch.Tensor, frames: torch.Tensor, state: torch.Tensor) -> bool:
        """``model.commit(ctx, all rows, actions, frames, state)`` when no context becomes full; returns
        whether it ran (False: nothing was done, call ``model.commit``)."""
        ctx = self.ctx
        if not ctx.started(slice(None)).all() or (ctx.blocks + 1 >= ctx.layout.history).any():
            return False
        self.commit_slots.copy_(self.model._slots(ctx.ends(slice(None)), self.commit_slots.shape[1]))
        self.actions.copy_(actions)
        self.frames.copy_(frames)
        self.state.copy_(state)
        self._commit()
        ctx.blocks += 1
        ctx.steps += 1
        return True
