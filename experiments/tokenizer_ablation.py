"""Does a frame tokenizer keep the cubes? Train one tokenizer variant with ``par-train tokenizer`` on
some datasets and report, per dataset, the PSNR of its reconstruction of the held-out frames (the
held-out episodes of par-train's own split): over the whole frame and over the cube pixels only
(``par_agent.metrics.object_psnr``).

    python experiments/tokenizer_ablation.py --data data64/PushCube-v1 data64/PickCube-v1 data64/StackCube-v1 \
        --init runs/protocol-cpu/video/tokenizer/final --fg-weight 0       # more steps, plain loss
    python experiments/tokenizer_ablation.py --data ... --init runs/protocol-cpu/video/tokenizer/final --fg-weight 20
    python experiments/tokenizer_ablation.py --data ... --preset cpu64 \
        --set vae_stride=4 'vae_channels=[16,32,64]' patch_size=4 --fg-weight 20 --lr 2e-3  # from scratch

Training is par-train's tokenizer stage itself (its objective, AdamW, cosine schedule and EMA; the
run folder is ``--out``), so an ablation measures what ``par-train tokenizer`` would give.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from par_agent.data.dataset import PhysicalStepDataset
from par_agent.metrics import frame_psnr, object_psnr
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.tokenizers import FrameTokenizer, reconstruct
from par_agent.training import TrainArgs, train
from par_agent.training.model import build_model


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
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--fg-weight", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4, help="windows per step (par-train's; each holds `history` frames)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.1, help="as par-train's (same held-out episodes)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: par-train's)")
    p.add_argument("--out", default=None, help="par-train run folder (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainArgs(stage="tokenizer", data=list(args.data), out=Path(args.out or tmp), steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, fg_weight=args.fg_weight, init=args.init,
                          preset=args.preset, overrides=tuple(args.overrides), val_fraction=args.val_fraction,
                          ckpt_every=args.steps, val_every=args.steps, threads=args.threads, progress=not args.json)
        start, _ = build_model(targs)  # what the stage starts from (the same seed, the same weights)
        cfg = start.cfg
        tok = start.frame_tokenizer.eval()
        frames = {split: {d: split_frames(d, split, cfg.image_size, cfg.chunk_size, args.val_fraction) for d in args.data}
                  for split in ("train", "val")}
        val = {d: torch.from_numpy(f) for d, f in frames["val"].items()}
        out: dict = {"tokenizer": args.init or f"{args.preset} {' '.join(args.overrides)}".strip(),
                     "fg_weight": args.fg_weight, "steps": args.steps, "batch_size": args.batch_size,
                     "train_frames": int(sum(len(f) for f in frames["train"].values())),
                     "before": {d: reconstruction_report(tok, f) for d, f in val.items()}}
        t0 = time.time()
        train(targs)
        out["train_minutes"] = (time.time() - t0) / 60
        tok = PhysicalAutoregressiveModel.from_pretrained(targs.out / "tokenizer" / "final").frame_tokenizer.eval()
        out["after"] = {d: reconstruction_report(tok, f) for d, f in val.items()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['tokenizer']}, fg_weight {args.fg_weight}, {args.steps} steps of {args.batch_size} windows "
              f"({out['train_minutes']:.1f} min on {out['train_frames']} frames)")
        for d in args.data:
            b, a = out["before"][d], out["after"][d]
            print(f"  {d}: frame PSNR {b['psnr']:.2f} -> {a['psnr']:.2f} dB, cube PSNR {b['object_psnr']:.2f} -> "
                  f"{a['object_psnr']:.2f} dB ({a['frames']} held-out frames)")
    return out


if __name__ == "__main__":
    main()
