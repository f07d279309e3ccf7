"""Does a frame tokenizer keep the cubes? Train one tokenizer variant on the training frames of
some datasets and report, per dataset, the PSNR of its reconstruction of the held-out frames:
over the whole frame and over the cube pixels only (``bench_world_model.object_psnr``).

    # the CPU-scale ablation of docs/RESULTS.md, 600 steps of 32 frames each:
    python benchmarks/tokenizer_ablation.py --data data64/PushCube-v1 data64/PickCube-v1 data64/StackCube-v1 \\
        --init runs/protocol-cpu/video/tokenizer/final --fg-weight 0       # more steps, plain loss
    python benchmarks/tokenizer_ablation.py --data ... --init runs/protocol-cpu/video/tokenizer/final --fg-weight 20
    python benchmarks/tokenizer_ablation.py --data ... --preset cpu64 \\
        --set vae_stride=4 'vae_channels=[16,32,64]' patch_size=4 --fg-weight 20 --lr 2e-3  # from scratch

It trains in memory with ``train_frame_tokenizer`` (single process, frames rather than windows),
so variants compare at equal budgets; ``par-train tokenizer`` is the resumable form of the same loss.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from par_agent.config import PARConfig
from par_agent.data.dataset import PhysicalStepDataset
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.metrics import frame_psnr, object_psnr
from par_agent.tokenizers import FrameTokenizer, reconstruct, train_frame_tokenizer
from par_agent.train import parse_overrides


def split_frames(path: str, split: str, image_size: int, chunk_size: int, val_fraction: float) -> np.ndarray:
    """The frames (N, H, W, 3) uint8 a model with ``chunk_size`` sees (one per physical step) of a split."""
    return PhysicalStepDataset(path, history=2, chunk_size=chunk_size, split=split, image_size=image_size,
                               frames_only=True, val_fraction=val_fraction).frames


def reconstruction_report(tok: FrameTokenizer, frames: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Whole-frame and cube-pixel PSNR (dB) of encode -> decode over (N, H, W, 3) uint8 frames."""
    rec = reconstruct(tok, frames, batch_size)
    return {"psnr": frame_psnr(rec, frames).mean().item(), "object_psnr": object_psnr(rec, frames), "frames": len(frames)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="datasets whose train split trains and val split tests")
    p.add_argument("--init", default=None, help="checkpoint whose tokenizer to start from (default: from scratch)")
    p.add_argument("--preset", default="cpu64", help="config when starting from scratch")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (scratch)")
    p.add_argument("--fg-weight", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32, help="frames per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk-size", type=int, default=8, help="control steps per physical step (frames kept)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as par-train's (same held-out episodes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same initial weights from scratch
    if args.init:
        tok = PhysicalAutoregressiveModel.from_pretrained(args.init).frame_tokenizer
        cfg_note = args.init
    else:
        cfg = PARConfig.named(args.preset, **parse_overrides(args.overrides))
        tok, cfg_note = FrameTokenizer(cfg), f"{args.preset} {' '.join(args.overrides)}".strip()
    size = tok.image_size
    train = np.concatenate([split_frames(d, "train", size, args.chunk_size, args.val_fraction) for d in args.data])
    val = {d: torch.from_numpy(split_frames(d, "val", size, args.chunk_size, args.val_fraction)) for d in args.data}
    out: dict = {"tokenizer": cfg_note, "fg_weight": args.fg_weight, "steps": args.steps, "batch_size": args.batch_size,
                 "train_frames": len(train), "before": {d: reconstruction_report(tok, f) for d, f in val.items()}}
    torch.manual_seed(0)  # the same noise for every variant
    t0 = time.time()
    train_frame_tokenizer(tok, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, fg_weight=args.fg_weight,
                          progress=not args.json)
    out["train_minutes"] = (time.time() - t0) / 60
    out["after"] = {d: reconstruction_report(tok, f) for d, f in val.items()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{cfg_note}, fg_weight {args.fg_weight}, {args.steps} steps of {args.batch_size} frames "
              f"({out['train_minutes']:.1f} min on {len(train)} frames)")
        for d in args.data:
            b, a = out["before"][d], out["after"][d]
            print(f"  {d}: frame PSNR {b['psnr']:.2f} -> {a['psnr']:.2f} dB, cube PSNR {b['object_psnr']:.2f} -> "
                  f"{a['object_psnr']:.2f} dB ({a['frames']} held-out frames)")
    return out


if __name__ == "__main__":
    main()
