"""The benchmark scripts run and report consistent figures (tiny config; no timing is asserted)."""
import pytest


def test_bench_train_reports_every_stage():
    from benchmarks import bench_train

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


def test_bench_train_set_overrides_the_preset():
    from benchmarks import bench_train

    out = bench_train.main(["--preset", "tiny", "--set", "image_size=64", "--stages", "tokenizer",
                            "--batch-size", "1", "--steps", "1", "--warmup", "0", "--json"])
    base = bench_train.main(["--preset", "tiny", "--stages", "tokenizer",
                             "--batch-size", "1", "--steps", "1", "--warmup", "0", "--json"])
    assert out["image_size"] == 64 and base["image_size"] == 32
    assert out["overrides"] == ["image_size=64"]
    # four times the pixels through the same convolutions: about four times the FLOPs
    ratio = out["stages"]["tokenizer"]["gflops_per_step"] / base["stages"]["tokenizer"]["gflops_per_step"]
    assert ratio == pytest.approx(4, rel=0.1)


def test_bench_inference_batch_and_cache_columns():
    from benchmarks import bench_inference

    out = bench_inference.main(["--preset", "tiny", "--batch", "3", "--contexts", "1", "3", "--repeats", "1",
                                "--steady-chunks", "2", "--json"])
    assert out["batch"] == 3 and set(out["contexts"]) == {"1", "3"}
    for row in out["contexts"].values():
        assert row["speedup"] == pytest.approx(row["uncached_ms"] / row["cached_ms"])
    assert out["ms_per_control_step"] == pytest.approx(out["ms_per_chunk"] / out["chunk_size"])


def test_object_mask_and_object_psnr():
    import math

    import torch

    from par_agent.metrics import frame_psnr, object_mask, object_psnr

    real = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    real[..., 0], real[..., 1], real[..., 2] = 170, 100, 60  # table colour: not an object
    real[0, 0, 0] = torch.tensor([110, 113, 121], dtype=torch.uint8)  # grey background: not an object
    assert not object_mask(real).any() and math.isnan(object_psnr(real, real))
    real[0, 4:6, 4:6] = torch.tensor([220, 30, 30], dtype=torch.uint8)  # red cube, 4 pixels
    real[0, 10, 10] = torch.tensor([30, 200, 40], dtype=torch.uint8)    # green cube, 1 pixel
    real[0, 12, 3] = torch.tensor([58, 102, 187], dtype=torch.uint8)    # blue cube, 1 pixel
    assert object_mask(real).sum() == 6
    blurred = real.clone()
    blurred[0, 4:6, 4:6] = torch.tensor([170, 100, 60], dtype=torch.uint8)  # the red cube is lost
    mse = 4 * (50**2 + 70**2 + 30**2) / 3 / 6  # error only on 4 of the 6 object pixels
    assert object_psnr(blurred, real) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-5)
    assert frame_psnr(blurred, real).item() > object_psnr(blurred, real)  # whole-frame PSNR hides it


def test_privileged_state_matches_a_live_env(pushcube_demos, tmp_path):
    """The privileged fields written for each demo step are what ManiSkill's rgb+state_dict mode
    shows at that step, the dataset picks them up, a replay of the wrong states is refused, and a
    model fine-tuned on them acts through par-eval --obs-mode rgb+state_dict (and only there)."""
    import json

    import h5py
    import numpy as np

    from par_agent.data import privileged as privileged_state
    from envs import flatten_state, make_env
    from envs import gym_make
    from par_agent.data.compact import load_episodes_json, read_group
    from par_agent.data.dataset import PhysicalStepDataset

    out = privileged_state.main(["--data", str(pushcube_demos), "--out", str(tmp_path / "priv"), "--no-progress"])
    assert out["reports"][0]["added"] == ["goal_pos", "obj_pose"]  # PushCube's state-mode extras
    dst = tmp_path / "priv" / pushcube_demos.name
    meta = load_episodes_json(dst)
    assert meta["env_info"]["env_kwargs"]["obs_mode"] == "rgb+state_dict"

    env = make_env("PushCube-v1", obs_mode="rgb+state_dict", camera_size=128)
    ep = meta["episodes"][0]
    obs, _ = env.reset(seed=ep["episode_seed"])
    ds = PhysicalStepDataset(dst, history=2, chunk_size=8, val_fraction=0.0)
    assert ds.states.shape[-1] == obs["state"].shape[-1] == 25 + 3 + 7
    with h5py.File(dst) as f:
        first = read_group(f[f"traj_{ep['episode_id']}"]["obs"])
    np.testing.assert_allclose(flatten_state(first)[0], obs["state"], atol=1e-4)
    env.close()

    # the states of another episode disagree with this episode's stored tcp_pose
    with h5py.File(pushcube_demos) as f:
        names = sorted(k for k in f if k.startswith("traj_"))
        states, extra = read_group(f[names[1]]["env_states"]), read_group(f[names[0]]["obs/extra"])
    senv = gym_make("PushCube-v1", obs_mode="state_dict", render_backend="none", sim_backend="cpu")
    senv.reset(seed=0)
    with pytest.raises(ValueError, match="tcp_pose"):
        privileged_state.privileged_extra(senv, states, extra)
    senv.close()

    # the pipeline the docs give: par-train finetune on the privileged demos, par-eval --obs-mode
    from par_agent.evaluate import run as eval_main
    from par_agent.train import main as train_main

    run = tmp_path / "run"
    train_main(["finetune", "--data", str(dst), "--out", str(run), "--steps", "2", "--preset", "tiny",
                "--batch-size", "2", "--no-progress", "--val-every", "1000"])
    report = tmp_path / "report.json"
    eval_main(["--policy", str(run / "finetune" / "final"), "--task", "PushCube-v1", "--episodes", "1",
               "--max-episode-steps", "3", "--obs-mode", "rgb+state_dict", "--out", str(report), "--no-progress"])
    r = json.loads(report.read_text())
    assert r["env"]["obs_mode"] == "rgb+state_dict" and r["per_seed"][0]["length"] == 3
    with pytest.raises(ValueError, match="obs_mode='rgb\\+state_dict'"):  # the plain env's state is too short
        eval_main(["--policy", str(run / "finetune" / "final"), "--task", "PushCube-v1", "--episodes", "1",
                   "--max-episode-steps", "3", "--obs-mode", "rgb", "--no-progress"])
    # without --obs-mode, par-eval builds the env the checkpoint recorded (rgb+state_dict)
    eval_main(["--policy", str(run / "finetune" / "final"), "--task", "PushCube-v1", "--episodes", "1",
               "--max-episode-steps", "3", "--out", str(report), "--no-progress"])
    assert json.loads(report.read_text())["env"]["obs_mode"] == "rgb+state_dict"

    # bench_world_model --actions on the same model: every held-out window, joints and gripper apart
    from benchmarks import bench_world_model as wm

    wmo = wm.main(["--checkpoint", str(run / "finetune" / "final"), "--data", str(dst), "--horizons", "1",
                   "--starts", "1", "--actions", "--json"])
    a = wmo["actions"]
    assert a["n_windows"] > 0 and np.isfinite(a["mse"]) and len(a["mse_per_block"]) >= 1
    assert a["mse"] == pytest.approx((7 * a["mse_joints"] + a["mse_gripper"]) / 8, rel=1e-4)


def test_bench_policy_envs_reports_both_paths():
    from benchmarks import bench_policy_envs

    out = bench_policy_envs.main(["--envs", "1", "3", "--chunks", "1", "--json"])
    assert [(r["pattern"], r["n_envs"]) for r in out["rows"]] == [("aligned", 1), ("aligned", 3), ("staggered", 1),
                                                                  ("staggered", 3)]
    for r in out["rows"]:
        assert r["batched"] > 0 and r["per_env_loop"] > 0
        assert r["speedup"] == r["batched"] / r["per_env_loop"]


@pytest.mark.slow  # about 4 minutes on 2 cores: the GPU script's dry run (its parts have their own fast tests)
def test_gpu_check_runs_every_part_on_the_cpu(pushcube_demos, tmp_path):
    """The GPU check script (benchmarks/gpu_check.py, run once on a GPU) on the CPU with the tiny
    config: every part runs, the trained folders load, cached == uncached on recorded observations,
    and the scaled run's final folder lands in OUT/scaled for par-eval."""
    import json

    from benchmarks import gpu_check
    from par_agent import PARPolicy

    rep = gpu_check.main(["--device", "cpu", "--tiny", "--data", str(pushcube_demos), "--out", str(tmp_path),
                          "--parts", "train", "policy", "bench", "scaled"])
    written = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert written == json.loads(json.dumps(rep["parts"], default=str))  # the report on disk is the run's, whole
    assert all(p["ok"] for p in rep["parts"].values()), {k: p.get("error") for k, p in rep["parts"].items()}
    train = rep["parts"]["train"]["stages"]
    assert set(train) == {"tokenizer", "pretrain-video", "finetune"} and "val/action_mse" in train["finetune"]["summary"]
    pol = rep["parts"]["policy"]
    assert pol["chunks"] > 0 and pol["cached_vs_uncached_max_abs_diff"] < 1e-4
    assert pol["device_cached_mae_to_demo"] == pol["cpu_cached_mae_to_demo"]  # the same device here
    assert set(rep["parts"]["bench"]["inference"]) == {"batch1_eager", "batch64_eager"}
    scaled = rep["parts"]["scaled"]
    assert scaled["steps"] >= 2 and scaled["summary"]["step"] == scaled["steps"]
    assert PARPolicy.from_pretrained(str(tmp_path / "scaled")).cfg.action_dim == 8
