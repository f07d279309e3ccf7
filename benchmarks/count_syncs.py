"""Host syncs per training step and per policy ``act``, counted on a simulated device, in one run.

    python -m benchmarks.count_syncs                 # cpu64 preset (from the repository root)
    python -m benchmarks.count_syncs --preset small --json

The model and every tensor it makes live on PyTorch's ``meta`` device, which stands for a GPU: meta
tensors have shapes but no data, and an op that mixes them with (non-scalar) CPU tensors raises, as
CUDA does. Under :class:`SimulatedDevice`, every op that would make the host wait for a GPU is
counted: reading a value (``.item()``, ``float()``, ``bool()``), a data-dependent shape (``nonzero``,
boolean-mask indexing, ``masked_select``) and a device->host copy. Values read are stood in for by
zeros, which is enough to count; data-dependent shapes cannot be stood in for and raise.

Counted: one optimiser step exactly as ``par-train`` runs it (``par_agent.training.step.train_step``: the
host->device copy of the batch, forward, backward, clipping, AdamW, schedule, EMA) for each stage,
plus the one all-reduced loss read that ``par-train`` makes at log and checkpoint steps; and one
``PARPolicy.predict`` call that computes a chunk for 4 envs, at the step where their contexts are full
and evict (the costliest chunk) (observations arrive as numpy, the
actions leave as numpy: that copy is the one a policy must make).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel

aten = torch.ops.aten
_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
_SHAPES = {aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
           aten._unique2.default, aten.repeat_interleave.Tensor}


class SimulatedDevice(TorchDispatchMode):
    """Counts the ops that would sync the host with the device (``meta`` standing for a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_device = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves((args, kwargs)))
        if on_device:
            bool_index = func is aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
            if func in _READS:
                self.counts["value read"] += 1
                return False if func is aten.equal.default else 0
            if func in _SHAPES or bool_index:
                self.counts["data-dependent shape"] += 1
                raise RuntimeError(f"{func} makes a shape depend on device data (a host sync on a GPU)")
            if func in (aten._to_copy.default, aten.copy_.default):
                dst = kwargs.get("device") if func is aten._to_copy.default else args[0].device
                if dst is not None and torch.device(dst).type == "cpu":
                    self.counts["device->host copy"] += 1
                    src = args[0] if func is aten._to_copy.default else args[1]
                    out = torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
                    return out if func is aten._to_copy.default else args[0].copy_(out)
        return func(*args, **kwargs)


def model_on_device(cfg: PARConfig) -> PhysicalAutoregressiveModel:
    """A model of ``cfg`` on the simulated device (weights need no values to count syncs)."""
    return PhysicalAutoregressiveModel(cfg).to("meta")


def count_train_step(cfg: PARConfig, stage: str, batch_size: int = 2) -> Counter:
    from benchmarks.bench_train import make_batch
    from par_agent.training.checkpoints import make_ema
    from par_agent.training.distributed import all_mean
    from par_agent.precision import autocast_for
    from par_agent.training.step import TokenizerObjective, make_optimizer, train_step

    model = model_on_device(cfg)
    dev = torch.device("meta")
    objective = TokenizerObjective(model) if stage == "tokenizer" else model
    params = list(model.frame_tokenizer.parameters()) if stage == "tokenizer" else \
        [p for n, p in model.named_parameters() if not n.startswith("frame_tokenizer.")]
    opt, sched = make_optimizer(params, 1e-4, 0.05, 0, 100)
    ema = make_ema(model, 0.999)
    batch = make_batch(cfg, stage, batch_size, torch.device("cpu"))
    with SimulatedDevice() as sim:
        out, _ = train_step(objective, model, batch, opt, sched, params, 1.0, ema, dev, autocast_for(dev))
    step = Counter(sim.counts)
    with SimulatedDevice() as sim:
        all_mean(out["loss"].float(), 1).item()  # par-train's read at log and checkpoint steps
    return step, Counter(sim.counts)


def count_act(cfg: PARConfig, n_envs: int = 4) -> Counter:
    from par_agent.policy import PARPolicy

    from gymnasium import spaces

    model = model_on_device(cfg)
    policy = PARPolicy(model, action_space=spaces.Box(-1, 1, (cfg.action_dim,), np.float32))
    rng = np.random.default_rng(0)
    obs = {"rgb": rng.integers(0, 256, (n_envs, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
           "state": rng.standard_normal((n_envs, cfg.state_dim)).astype(np.float32)}
    with SimulatedDevice() as sim:
        policy.predict(obs, episode_start=np.ones(n_envs, bool))  # first chunk: start
        for _ in range(cfg.chunk_size * (cfg.history - 1) - 1):  # up to the chunk whose commit evicts
            policy.predict(obs)
        sim.counts.clear()
        policy.predict(obs)  # a chunk with commit (evicting and refilling) and act
    return Counter(sim.counts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu64")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    cfg = PARConfig.named(a.preset)
    report = {"preset": a.preset, "train_step": {}, "log_read": {}}
    for stage in ("tokenizer", "pretrain-video", "finetune"):
        step, log = count_train_step(cfg, stage)
        report["train_step"][stage], report["log_read"][stage] = dict(step), dict(log)
    report["act_4_envs"] = dict(count_act(cfg))
    if a.json:
        print(json.dumps(report))
    else:
        print(f"host syncs on a simulated device ({a.preset}):")
        for stage, c in report["train_step"].items():
            print(f"  one par-train step, {stage}: {sum(c.values())} {c or ''}; "
                  f"+ {sum(report['log_read'][stage].values())} at log/checkpoint steps")
        print(f"  one predict that computes a chunk for 4 envs: {sum(report['act_4_envs'].values())} "
              f"{report['act_4_envs']}")
    return report


if __name__ == "__main__":
    main()
