"""par-train stages end to end on real demos, kill-and-resume, and DDP with two gloo processes."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from par_agent.train import main as train_main
from par_agent.training.checkpoints import latest_checkpoint

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--log-every", "1", "--val-every", "1000"]


def run_stage(stage, data, out, steps, *extra):
    train_main([stage, "--data", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra])


@pytest.fixture(scope="module")
def trained_run(pushcube_demos, tmp_path_factory):
    """tokenizer -> pretrain-video -> finetune, a few steps each, tiny model, 2 real demos."""
    out = tmp_path_factory.mktemp("run")
    run_stage("tokenizer", pushcube_demos, out, 4)
    run_stage("pretrain-video", pushcube_demos, out, 3)
    run_stage("finetune", pushcube_demos, out, 4, "--ckpt-every", "2")
    return out


def test_each_stage_writes_a_loadable_final_folder(trained_run):
    from par_agent.models import PhysicalAutoregressiveModel

    for stage in ("tokenizer", "pretrain-video", "finetune"):
        d = trained_run / stage
        assert (d / "final" / "config.json").is_file() and (d / "final" / "model.safetensors").is_file()
        summary = json.loads((d / "summary.json").read_text())
        assert summary["step"] == {"tokenizer": 4, "pretrain-video": 3, "finetune": 4}[stage]
        assert np.isfinite(summary["loss"])
        assert (d / "metrics.csv").read_text().count("train/loss") == summary["step"]
    m = PhysicalAutoregressiveModel.from_pretrained(trained_run / "finetune" / "final")
    assert m.cfg.task_names == ("PushCube-v1",)
    assert bool(m.action_norm.fitted) and bool(m.state_norm.fitted)
    # the tokenizer trained in stage 1 travels unchanged through the later stages
    t1 = PhysicalAutoregressiveModel.from_pretrained(trained_run / "tokenizer" / "final").frame_tokenizer.state_dict()
    t3 = m.frame_tokenizer.state_dict()
    assert all(torch.equal(t1[k], t3[k]) for k in t1)


def test_rollout_of_trained_policy_writes_two_panel_video(trained_run, tmp_path):
    import imageio.v2 as imageio

    from envs import VideoRecorder, make_env
    from par_agent import PARPolicy

    policy = PARPolicy.from_pretrained(str(trained_run / "finetune" / "final"))
    env = make_env("PushCube-v1", camera_size=32, max_episode_steps=6)
    rec = VideoRecorder(tmp_path / "videos", panel_size=64)
    obs, _ = env.reset(seed=1_000_000)
    done, step = False, 0
    while not done:
        action, _ = policy.predict(obs, episode_start=np.array([step == 0]), deterministic=True)
        rec.add(obs["rgb"], policy.predicted_frames()[0], step=step)
        obs, _, term, trunc, info = env.step(action)
        done, step = term or trunc, step + 1
    path = rec.close_episode(success=bool(info["success"]))
    env.close()
    frames = imageio.mimread(path)
    assert len(frames) == 6
    f = np.asarray(frames[1]).astype(int)
    left, right = f[:64, :64], f[:64, -64:]
    assert f.shape[1] >= 128 and left.std() > 5 and right.std() > 1  # both panels hold images
    assert np.abs(left - right).mean() > 1  # and not the same image


def test_par_eval_report(trained_run, tmp_path):
    from par_agent.evaluate import run as eval_main

    out = tmp_path / "report.json"
    eval_main(["--policy", str(trained_run / "finetune" / "final"), "--task", "PushCube-v1", "--episodes", "3",
               "--num-envs", "2", "--max-episode-steps", "4", "--videos", "1", "--video-dir", str(tmp_path / "v"),
               "--out", str(out), "--no-progress"])
    r = json.loads(out.read_text())
    from par_agent.evaluate import wilson_ci95

    assert r["n_episodes"] == 3 and r["success_rate"] == sum(e["success"] for e in r["per_seed"]) / 3
    assert r["ci95"] == pytest.approx(list(wilson_ci95(sum(e["success"] for e in r["per_seed"]), 3)))
    assert [e["seed"] for e in r["per_seed"]] == [1_000_000, 1_000_001, 1_000_002]
    assert all(e["length"] == 4 or e["success"] for e in r["per_seed"])
    assert len(r["videos"]) == 1 and Path(r["videos"][0]).is_file()
    assert r["policy_ms_per_control_step"] > 0
    flags = {k for e in r["per_seed"] for k in e.get("reached", {})}
    assert set(r["subgoal_rates"]) == flags and "success" not in flags
    assert not any(k.startswith("TimeLimit") for k in flags)  # SB3 bookkeeping, not a sub-goal
    for k, rate in r["subgoal_rates"].items():
        assert rate == sum(e.get("reached", {}).get(k, False) for e in r["per_seed"]) / 3
    # the checkpoint knows the env of its demos (128 px camera, control mode, ...), and par-eval builds that env
    from par_agent import PARPolicy

    env_kwargs = PARPolicy.from_pretrained(str(trained_run / "finetune" / "final")).env_kwargs
    assert env_kwargs == {"camera_size": 128, "control_mode": "pd_joint_pos", "obs_mode": "rgb",
                          "cameras": ["base_camera"], "max_episode_steps": 100}
    assert r["env"]["camera_size"] == 128 and r["env"]["max_episode_steps"] == 4


def test_wilson_interval_matches_known_values():
    """Against the closed form's values (e.g. statsmodels' proportion_confint(..., method="wilson"))."""
    from par_agent.evaluate import wilson_ci95

    assert wilson_ci95(241, 250) == pytest.approx((0.9330, 0.9809), abs=1e-4)  # par-pushcube's report
    assert wilson_ci95(29, 50) == pytest.approx((0.4423, 0.7062), abs=1e-4)
    assert wilson_ci95(0, 50) == pytest.approx((0.0, 0.0713), abs=1e-4)
    assert wilson_ci95(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)
    assert wilson_ci95(0, 0) == (0.0, 1.0)


def test_interrupted_par_eval_resumes_where_it_stopped(trained_run, tmp_path, monkeypatch):
    """Episodes are logged as they finish; the same command after an interruption runs only the rest, and
    the report equals an uninterrupted run's. Another run's log is refused and left as it is."""
    from par_agent import evaluate as E

    args = ["--policy", str(trained_run / "finetune" / "final"), "--task", "PushCube-v1", "--episodes", "3",
            "--num-envs", "1", "--max-episode-steps", "3", "--no-progress"]
    whole = E.run(args + ["--out", str(tmp_path / "whole.json")])
    out = tmp_path / "cut.json"
    real_add = E.EpisodeLog.add

    def add_then_die(self, episode):
        real_add(self, episode)
        if len(self.path.read_text().splitlines()) == 3:  # the header and two episodes
            raise KeyboardInterrupt

    monkeypatch.setattr(E.EpisodeLog, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        E.run(args + ["--out", str(out)])
    log = tmp_path / "cut.json.episodes.jsonl"
    assert not out.exists() and len(log.read_text().splitlines()) == 3
    with log.open("a") as f:  # a line cut by the interruption: dropped, its episode runs again
        f.write('{"seed": 1000002, "succ')
    monkeypatch.setattr(E.EpisodeLog, "add", real_add)
    ran = []
    monkeypatch.setattr(E.EpisodeLog, "add", lambda self, ep: ran.append(ep["seed"]) or real_add(self, ep))
    resumed = E.run(args + ["--out", str(out)])
    assert ran == [1_000_002] and resumed["resumed_episodes"] == 2
    assert resumed["per_seed"] == whole["per_seed"] and not log.exists()
    assert json.loads(out.read_text())["per_seed"] == whole["per_seed"]
    # a log written by another evaluation (here: other seeds) is an error, and stays
    other = tmp_path / "other.json"
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(E.EpisodeLog, "add", add_then_die)
        E.run(args + ["--out", str(other)])
    before = (tmp_path / "other.json.episodes.jsonl").read_text()
    with pytest.raises(ValueError, match="another evaluation"):
        E.run(args + ["--seeds", "5-7", "--out", str(other)])
    assert (tmp_path / "other.json.episodes.jsonl").read_text() == before


def test_kill_after_checkpoint_then_resume(pushcube_demos, tmp_path, monkeypatch):
    import par_agent.training.loop as T

    run_stage("tokenizer", pushcube_demos, tmp_path, 2)
    calls = {"n": 0}
    real_save = T.save_training_checkpoint

    def save_then_die(*a, **k):
        path = real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed right after the first checkpoint")
        return path

    monkeypatch.setattr(T, "save_training_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_stage("finetune", pushcube_demos, tmp_path, 6, "--ckpt-every", "3")
    stage = tmp_path / "finetune"
    ck = latest_checkpoint(stage)
    assert ck is not None and ck.name == "ckpt-00000003"
    saved = torch.load(ck / "trainer.pt", weights_only=False)
    (stage / "ckpt-00000004.tmp").mkdir()  # debris of a checkpoint interrupted mid-write: ignored
    monkeypatch.setattr(T, "save_training_checkpoint", real_save)
    run_stage("finetune", pushcube_demos, tmp_path, 6, "--ckpt-every", "3")
    assert json.loads((stage / "summary.json").read_text())["step"] == 6
    final = torch.load(latest_checkpoint(stage) / "trainer.pt", weights_only=False)
    assert final["step"] == 6
    # Adam's per-parameter step count carried on from 3 (a restart from scratch would say 3 here)
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {6}
    assert {int(s["step"]) for s in saved["optimizer"]["state"].values()} == {3}
    logged = [int(r.split(",")[0]) for r in (stage / "metrics.csv").read_text().splitlines()[1:] if ",train/loss," in r]
    assert logged == [1, 2, 3, 4, 5, 6]
    # and the resumed run is the uninterrupted one: the same batches, noise, schedule, weights and EMA
    from par_agent.hub import read_checkpoint

    whole = tmp_path / "whole"
    run_stage("tokenizer", pushcube_demos, whole, 2)
    run_stage("finetune", pushcube_demos, whole, 6, "--ckpt-every", "3")
    other = torch.load(latest_checkpoint(whole / "finetune") / "trainer.pt", weights_only=False)
    assert other["scheduler"]["last_epoch"] == final["scheduler"]["last_epoch"] == 6
    assert other["scheduler"]["_last_lr"] == final["scheduler"]["_last_lr"]
    for ema_a, ema_b in zip(other["ema"]["shadow_params"], final["ema"]["shadow_params"]):
        torch.testing.assert_close(ema_a, ema_b, rtol=0, atol=1e-6)
    _, resumed, _ = read_checkpoint(stage / "final")
    _, straight, _ = read_checkpoint(whole / "finetune" / "final")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_two_gloo_processes(pushcube_demos, tmp_path):
    run_stage("tokenizer", pushcube_demos, tmp_path, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "par_agent.train", "finetune", "--data", str(pushcube_demos),
           "--out", str(tmp_path), "--steps", "3", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "finetune" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "finetune" / "rank1.json").read_text())
    assert r0["loss"] == r1["loss"]  # all-reduced
    assert r0["param_checksum"] == pytest.approx(r1["param_checksum"], rel=1e-6)  # DDP kept replicas equal
    from par_agent import PARPolicy

    PARPolicy.from_pretrained(str(tmp_path / "finetune" / "final"))


def test_adapt_model_keeps_fitting_weights_and_task_rows():
    from par_agent.config import PARConfig
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.training.model import adapt_model

    torch.manual_seed(0)
    m = PhysicalAutoregressiveModel(PARConfig.named("tiny", task_names=("A-v1", "B-v1", "C-v1")))
    new, reinit = adapt_model(m, task_names=("C-v1",), state_dim=29)
    assert new.cfg.task_names == ("C-v1",) and new.cfg.state_dim == 29
    assert torch.equal(new.task_emb.weight[0], m.task_emb.weight[2])
    assert "state_in.weight" in reinit and "task_emb.weight" not in reinit
    old, sd = m.state_dict(), new.state_dict()
    kept = [k for k in sd if k not in reinit and k != "task_emb.weight"]
    assert kept and all(torch.equal(sd[k], old[k]) for k in kept)
    assert adapt_model(m) == (m, [])  # nothing to change: the same object
    # a wider backbone (a model-size change on a pretrained tokenizer): the tokenizer is kept,
    # every tensor of the old width (task rows included) starts fresh
    wide, reinit = adapt_model(m, width=m.cfg.width * 2)
    assert wide.cfg.width == 2 * m.cfg.width and "task_emb.weight" in reinit
    assert "frame_tokenizer.vae.encoder.conv_in.weight" not in reinit
    assert torch.equal(wide.state_dict()["frame_tokenizer.vae.encoder.conv_in.weight"],
                       old["frame_tokenizer.vae.encoder.conv_in.weight"])
    with pytest.raises(ValueError, match="unknown task"):
        m.cfg.task_id("D-v1")


def test_finetune_adapts_a_multitask_video_model_to_the_task_and_state_size(trained_run, pushcube_demos, tmp_path):
    """Video pretraining on several tasks, then single-task finetuning on data whose state size
    differs from the pretrained config (as PickCube's 29 values differ from PushCube's 25)."""
    from par_agent.hub import read_checkpoint
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.training.model import adapt_model

    video = PhysicalAutoregressiveModel.from_pretrained(trained_run / "pretrain-video" / "final")
    multi, _ = adapt_model(video, task_names=("PickCube-v1", "PushCube-v1", "StackCube-v1"), state_dim=7)
    multi.save_pretrained(tmp_path / "multi")
    run_stage("finetune", pushcube_demos, tmp_path / "ft", 2, "--init", str(tmp_path / "multi"))
    cfg, state, _ = read_checkpoint(tmp_path / "ft" / "finetune" / "final")
    assert cfg.task_names == ("PushCube-v1",) and cfg.state_dim == 25
    # the PushCube row of the task embedding came from the pretrained model (then trained 2 steps)
    assert state["task_emb.weight"].shape == (1, cfg.width)
    assert torch.equal(state["frame_tokenizer.vae.encoder.conv_in.weight"],
                      multi.state_dict()["frame_tokenizer.vae.encoder.conv_in.weight"])
    # --train-episodes reaches the data: these 2 demos keep 1 for training, 1 held out
    with pytest.raises(ValueError, match="train_episodes=2, but .* has 1 training episodes"):
        run_stage("finetune", pushcube_demos, tmp_path / "ft2", 2, "--init", str(tmp_path / "multi"),
                  "--train-episodes", "2")


def test_frames_only_stages_mix_tasks_whose_state_sizes_differ(pushcube_demos, tmp_path):
    """Tokenizer and video pretraining on two tasks' demos whose proprio states differ (25 vs 29
    values, as PushCube vs PickCube): the frames-only stages read no state, so batches mix."""
    import h5py

    from conftest import copy_demo
    from par_agent.models import PhysicalAutoregressiveModel

    other = copy_demo(pushcube_demos, tmp_path / "other")
    meta = json.loads(other.with_suffix(".json").read_text())
    meta["env_info"]["env_id"] = "PickCube-v1"
    other.with_suffix(".json").write_text(json.dumps(meta))
    with h5py.File(other, "r+") as f:
        for name in f:
            n = len(f[name]["obs/agent/qpos"])
            f[name]["obs/extra"].create_dataset("goal_pos", data=np.zeros((n, 3), np.float32))
            f[name]["obs/extra"].create_dataset("is_grasped", data=np.zeros(n, bool))
    out = tmp_path / "run"
    data = [str(pushcube_demos), str(other)]
    train_main(["tokenizer", "--data", *data, "--out", str(out), "--steps", "2", *TINY, "--batch-size", "4"])
    train_main(["pretrain-video", "--data", *data, "--out", str(out), "--steps", "2", *TINY, "--batch-size", "4",
                "--val-every", "2"])
    m = PhysicalAutoregressiveModel.from_pretrained(out / "pretrain-video" / "final")
    assert m.cfg.task_names == ("PickCube-v1", "PushCube-v1")


def test_validate_scores_the_asked_windows_in_batches(trained_run, pushcube_demos):
    """--val-windows sets how many held-out windows a validation scores; scoring them a few at a
    time gives the figures of one batch (the tokenizer's exactly; sampled ones stay finite)."""
    from par_agent.data.dataset import PhysicalStepDataset
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.training import parse_args
    from par_agent.training.validation import validate

    m = PhysicalAutoregressiveModel.from_pretrained(trained_run / "finetune" / "final")
    cfg = m.cfg
    val = PhysicalStepDataset(pushcube_demos, split="all", history=cfg.history, chunk_size=cfg.chunk_size,
                              image_size=cfg.image_size)
    one = validate(m, [val], "finetune", "cpu", None, 0, max_windows=6, batch_size=6)
    few = validate(m, [val], "finetune", "cpu", None, 0, max_windows=6, batch_size=4)
    other = validate(m, [val], "finetune", "cpu", None, 0, max_windows=3, batch_size=6)
    assert set(one) == set(few) == {"val/tokenizer_psnr", "val/frame_psnr", "val/action_mse"}
    assert one["val/tokenizer_psnr"] == pytest.approx(few["val/tokenizer_psnr"], rel=1e-5)
    assert one["val/tokenizer_psnr"] != pytest.approx(other["val/tokenizer_psnr"], rel=1e-7)
    assert all(np.isfinite(v) for v in (*one.values(), *few.values()))
    assert parse_args(["finetune", "--data", "d", "--out", "o", "--val-windows", "200"]).val_windows == 200
    with pytest.raises(SystemExit):
        parse_args(["finetune", "--data", "d", "--out", "o", "--val-windows", "0"])


@pytest.mark.slow
def test_distributed_teardown_never_hangs(pushcube_demos, tmp_path):
    """The issue's command, 32 times (a hang seen once in 11 runs would show up with 97% probability):
    every 2-process run must exit, both ranks, within the time limit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for i in range(32):
        out = tmp_path / f"run{i}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "par_agent.train", "tokenizer", "--preset", "tiny",
               "--data", str(pushcube_demos), "--out", str(out), "--steps", "2", "--no-progress"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (i, proc.stderr[-3000:])
        assert (out / "tokenizer" / "final" / "model.safetensors").is_file()


def test_non_finite_loss_stops_before_a_checkpoint(pushcube_demos, tmp_path, monkeypatch):
    """A NaN loss is caught at the next log step (one all-reduced read that every rank shares), and no
    checkpoint is written after it."""
    from par_agent.models import PhysicalAutoregressiveModel

    real = PhysicalAutoregressiveModel.forward
    calls = {"n": 0}

    def nan_at_step_3(self, batch):
        out = real(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    run_stage("tokenizer", pushcube_demos, tmp_path, 1)
    monkeypatch.setattr(PhysicalAutoregressiveModel, "forward", nan_at_step_3)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 4"):
        run_stage("pretrain-video", pushcube_demos, tmp_path, 8, "--log-every", "2", "--ckpt-every", "2")
    assert latest_checkpoint(tmp_path / "pretrain-video").name == "ckpt-00000002"


def test_checkpoint_rng_covers_every_device(monkeypatch):
    """Resuming restores the RNG of every device the run drew from (diffusion noise is drawn on the
    model's device); a CUDA checkpoint cannot be resumed silently without CUDA."""
    import par_agent.training.checkpoints as T

    state = T.rng_state()
    assert set(state) == {"cpu", "numpy"}  # CUDA never initialised on this machine
    fake = [torch.arange(4, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    assert T.rng_state()["cuda"] is fake
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.update(s=s))
    before = torch.rand(3)
    T.set_rng_state({**state, "cuda": fake})
    assert restored["s"] is fake and torch.equal(torch.rand(3), before)  # the CPU stream continues from the save
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="trained on CUDA"):
        T.set_rng_state({**state, "cuda": fake})


def test_validation_without_imageio_ffmpeg_warns_once_and_scores(tmp_path, monkeypatch):
    """A GPU image whose Python lacks imageio-ffmpeg: validation scores as usual, writes no video and
    warns once (a run is not lost at its first validation for want of a preview)."""
    import sys
    import warnings

    from helpers import synthetic_batch, tiny_model
    from par_agent.training import validation

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails
    validation.can_write_videos.cache_clear()
    m = tiny_model()
    item = {k: v[0] for k, v in synthetic_batch(m.cfg, B=1).items()}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in (1, 2):
            scores = validation.validate(m, [[item]], "finetune", m.device, tmp_path / "videos", step)
    validation.can_write_videos.cache_clear()
    assert set(scores) == {"val/tokenizer_psnr", "val/frame_psnr", "val/action_mse"}
    assert all(np.isfinite(v) for v in scores.values())
    assert not list(tmp_path.glob("videos/*.mp4"))
    assert len([w for w in record if "imageio-ffmpeg" in str(w.message)]) == 1


def test_finetune_in_bf16_logs_it_and_writes_a_float32_model(trained_run, pushcube_demos, tmp_path, capsys):
    """par-train --precision bf16: the matrix products in bfloat16 (said in the start line), finite
    losses, and a final model whose weights stay float32."""
    from par_agent.hub import read_checkpoint

    run_stage("finetune", pushcube_demos, tmp_path, 3, "--init", str(trained_run / "pretrain-video" / "final"),
              "--precision", "bf16", "--log-every", "1")
    assert "bf16 matrix products" in capsys.readouterr().err
    summary = json.loads((tmp_path / "finetune" / "summary.json").read_text())
    assert math.isfinite(summary["loss"]) and math.isfinite(summary["val/action_mse"])
    _, state, _ = read_checkpoint(tmp_path / "finetune" / "final")
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
