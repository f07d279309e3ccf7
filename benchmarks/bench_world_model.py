"""World-model quality on held-out demonstrations: PSNR and SSIM of predicted vs real frames,
one physical step ahead (teacher forcing) and over open-loop rollouts of H blocks given the
true actions.

    python benchmarks/bench_world_model.py --checkpoint par-pushcube --data data64/PushCube-v1 --json

Open loop: from the real o_s, the model imagines F^_{s+1}, which is decoded, fed back as the
observation together with the true action chunk and the true proprio state (the robot's own
state is not predicted by PAR), and so on for H blocks; F^_{s+H} is compared to o_{s+H}.
The validation split of the dataset (episodes the model never trained on) is used.

Object PSNR: the frame PSNR is dominated by the table and the arm, so the cubes get their own
figure: the PSNR over the real frames' object pixels only (saturated red, green or blue: the
cubes; PickCube's goal is hidden from the camera).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.data import default_collate

from par_agent.data.dataset import PhysicalStepDataset
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.metrics import action_errors, frame_psnr, object_mask, object_psnr, ssim


@torch.no_grad()
def action_error(model: PhysicalAutoregressiveModel, ds: PhysicalStepDataset, batch_size: int = 64) -> dict:
    """Action error over every window of ``ds``, as par-train's ``val/action_mse`` (which uses 16
    windows): mean squared error of the raw actions (joint targets in rad, gripper target) that
    ``sample_window`` infers for block n from the context and the *real* next frame F_{n+1}, so it
    measures the inverse-dynamics read-out, not the imagined frame the policy acts from. All
    dimensions, the joints (all but the last), the gripper (the last), and per block of the window.
    Deterministic sampling (seed 0)."""
    g = torch.Generator().manual_seed(0)
    sq, masks = [], []
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        batch = default_collate(items)
        pred = model.sample_window(batch, generator=g).get("actions")
        if pred is None:
            raise ValueError("this checkpoint has no action head (a video model): --actions needs a fine-tuned one")
        err, mask = action_errors(pred, batch)
        sq.append(err)  # (B, T-1, K, D_a)
        masks.append(mask)  # (B, T-1, K)
    sq, m = torch.cat(sq), torch.cat(masks)
    per_block = [sq[:, t][m[:, t]].mean().item() for t in range(sq.shape[1]) if m[:, t].any()]
    return {"n_windows": len(ds), "mse": sq[m].mean().item(), "mse_joints": sq[m][:, :-1].mean().item(),
            "mse_gripper": sq[m][:, -1].mean().item(), "mse_per_block": per_block}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="par-pushcube")
    p.add_argument("--data", required=True, help=".h5 / data folder with demonstrations of the model's task")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--starts", type=int, default=16, help="open-loop start points (spread over val episodes)")
    p.add_argument("--actions", action="store_true",
                   help="also the action error over every held-out window (raw actions, as val/action_mse)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    model = PhysicalAutoregressiveModel.from_pretrained(args.checkpoint)
    cfg, tok = model.cfg, model.frame_tokenizer
    hmax = max(args.horizons)
    ds = PhysicalStepDataset(args.data, history=cfg.history, chunk_size=cfg.chunk_size, split="val",
                             image_size=cfg.image_size)
    g = torch.Generator().manual_seed(0)
    out: dict = {"checkpoint": args.checkpoint, "val_episodes": ds.num_episodes}

    # one step ahead, teacher forced, every window of the val split that starts at a block 0 of an episode
    items = [ds[i] for i in range(len(ds)) if int(ds._windows[i][1]) == 0]
    batch = default_collate(items)
    pred = tok.decode(model.sample_window(batch, generator=g)["frame_tokens"])
    valid = batch["frame_mask"][:, 1:] & batch["frame_mask"][:, :-1]
    real, fake = batch["frames"][:, 1:][valid], pred[valid]
    recon = tok.decode(tok.encode(real))
    out["tokenizer_psnr"] = frame_psnr(recon, real).mean().item()
    out["one_step"] = {"psnr": frame_psnr(fake, real).mean().item(), "ssim": ssim(fake, real).mean().item(), "n": len(real)}
    out["object_pixels_per_frame"] = object_mask(real).sum((1, 2)).float().mean().item()
    out["object_psnr"] = {"tokenizer": object_psnr(recon, real), "one_step": object_psnr(fake, real)}

    # open loop over H blocks with the true actions
    starts = [i for i in range(len(ds)) if int(ds._windows[i][1]) + hmax <= ds._n_blocks[int(ds._windows[i][0])]]
    starts = starts[:: max(1, len(starts) // args.starts)][: args.starts]
    per_h: dict[int, list[tuple[float, float]]] = {h: [] for h in args.horizons}
    long = PhysicalStepDataset(args.data, history=hmax + 1, chunk_size=cfg.chunk_size, split="val",
                               image_size=cfg.image_size, stats=ds.stats)
    for i in starts:
        w = long[i]
        ctx = model.new_contexts(1)
        model.start(ctx, [0], w["task_id"][None], w["frames"][:1], w["state"][:1])
        for h in range(1, hmax + 1):
            noise = torch.randn(1, cfg.frame_tokens, cfg.token_dim, generator=g, device=g.device)
            f = tok.decode(model.imagine(ctx, [0], noise))
            if h in per_h:
                real = w["frames"][h:h + 1]
                per_h[h].append((frame_psnr(f, real).item(), ssim(f, real).item()))
            model.commit(ctx, [0], w["actions"][h - 1:h], f, w["state"][h:h + 1])
    if args.actions:
        out["actions"] = action_error(model, ds)
    out["open_loop"] = {str(h): {"psnr": sum(v[0] for v in vals) / len(vals), "ssim": sum(v[1] for v in vals) / len(vals),
                                 "n": len(vals)} for h, vals in per_h.items() if vals}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"val episodes {out['val_episodes']}; tokenizer reconstruction PSNR {out['tokenizer_psnr']:.2f} dB")
        print(f"one step ahead (teacher forced): PSNR {out['one_step']['psnr']:.2f} dB, SSIM {out['one_step']['ssim']:.3f}"
              f" over {out['one_step']['n']} frames")
        o = out["object_psnr"]
        print(f"objects: {out['object_pixels_per_frame']:.1f} pixels per real frame; PSNR on them: tokenizer "
              f"reconstruction {o['tokenizer']:.2f} dB, one step ahead {o['one_step']:.2f} dB")
        if "actions" in out:
            a = out["actions"]
            print(f"actions given the real next frame, {a['n_windows']} held-out windows: MSE {a['mse']:.5f} (joints "
                  f"{a['mse_joints']:.5f}, gripper {a['mse_gripper']:.5f}); MSE per block of the window "
                  + ", ".join(f"{v:.5f}" for v in a["mse_per_block"]))
        for h, v in out["open_loop"].items():
            print(f"open loop, {h} blocks ({int(h) * cfg.chunk_size} control steps): PSNR {v['psnr']:.2f} dB, "
                  f"SSIM {v['ssim']:.3f} over {v['n']} rollouts")
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
