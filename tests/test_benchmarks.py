"""The benchmark scripts run and report consistent figures (tiny config; no timing is asserted)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_train_reports_every_stage():
    import bench_train

    out = bench_train.main(["--preset", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                            "--peak-tflops", "1", "--json"])
    assert set(out["stages"]) == {"tokenizer", "pretrain-video", "finetune"}
    for row in out["stages"].values():
        assert row["ms_per_step"] > 0 and row["gflops_per_step"] > 0
        assert row["samples_per_s"] == pytest.approx(2000 / row["ms_per_step"])
        assert row["mfu"] == pytest.approx(row["achieved_tflops"])
    # fine-tuning trains the action head on top of what video pretraining trains
    assert out["stages"]["finetune"]["gflops_per_step"] > out["stages"]["pretrain-video"]["gflops_per_step"]
    assert out["stages"]["finetune"]["trainable_params"] == out["stages"]["pretrain-video"]["trainable_params"]


def test_bench_inference_batch_and_cache_columns():
    import bench_inference

    out = bench_inference.main(["--preset", "tiny", "--batch", "3", "--contexts", "1", "3", "--repeats", "1",
                                "--steady-chunks", "2", "--json"])
    assert out["batch"] == 3 and set(out["contexts"]) == {"1", "3"}
    for row in out["contexts"].values():
        assert row["speedup"] == pytest.approx(row["uncached_ms"] / row["cached_ms"])
    assert out["ms_per_control_step"] == pytest.approx(out["ms_per_chunk"] / out["chunk_size"])


def test_object_mask_and_object_psnr():
    import math

    import torch

    import bench_world_model as wm

    real = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    real[..., 0], real[..., 1], real[..., 2] = 170, 100, 60  # table colour: not an object
    real[0, 0, 0] = torch.tensor([110, 113, 121], dtype=torch.uint8)  # grey background: not an object
    assert not wm.object_mask(real).any() and math.isnan(wm.object_psnr(real, real))
    real[0, 4:6, 4:6] = torch.tensor([220, 30, 30], dtype=torch.uint8)  # red cube, 4 pixels
    real[0, 10, 10] = torch.tensor([30, 200, 40], dtype=torch.uint8)    # green cube, 1 pixel
    real[0, 12, 3] = torch.tensor([58, 102, 187], dtype=torch.uint8)    # blue cube, 1 pixel
    assert wm.object_mask(real).sum() == 6
    blurred = real.clone()
    blurred[0, 4:6, 4:6] = torch.tensor([170, 100, 60], dtype=torch.uint8)  # the red cube is lost
    mse = 4 * (50**2 + 70**2 + 30**2) / 3 / 6  # error only on 4 of the 6 object pixels
    assert wm.object_psnr(blurred, real) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-5)
    assert wm.psnr(blurred, real).item() > wm.object_psnr(blurred, real)  # whole-frame PSNR hides it


def test_tokenizer_ablation_reports_frame_and_cube_psnr(pushcube_demos):
    import math

    import tokenizer_ablation

    out = tokenizer_ablation.main(["--data", str(pushcube_demos), "--preset", "tiny", "--set", "image_size=64", "--steps", "3", "--batch-size", "4",
                                   "--chunk-size", "2", "--val-fraction", "0.5", "--json"])
    held_out = out["after"][str(pushcube_demos)]
    assert out["train_frames"] > 0 and held_out["frames"] > 0  # one demo trains, the other is held out
    assert math.isfinite(held_out["psnr"]) and held_out["psnr"] != out["before"][str(pushcube_demos)]["psnr"]
    assert math.isfinite(held_out["object_psnr"])  # at 64 px the blue cube's pixels are found in every report
