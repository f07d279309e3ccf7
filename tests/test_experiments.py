"""The diagnostics and baselines under experiments/ (docs/RESULTS.md cites their reports)."""

import pytest


def test_tokenizer_ablation_reports_frame_and_cube_psnr(pushcube_demos):
    import math

    from experiments import tokenizer_ablation

    out = tokenizer_ablation.main(["--data", str(pushcube_demos), "--preset", "tiny", "--set", "image_size=64",
                                   "chunk_size=2", "--steps", "3", "--batch-size", "4", "--val-fraction", "0.5", "--json"])
    held_out = out["after"][str(pushcube_demos)]
    assert out["train_frames"] > 0 and held_out["frames"] > 0  # one demo trains, the other is held out
    assert math.isfinite(held_out["psnr"]) and held_out["psnr"] != out["before"][str(pushcube_demos)]["psnr"]
    assert math.isfinite(held_out["object_psnr"])  # at 64 px the blue cube's pixels are found in every report


@pytest.mark.maniskill
def test_cube_visibility_counts_hidden_cubes_and_splits_reports(tmp_path):
    """StackCube's first frame at seed +13 (64 px, fov 0.8): the arm at rest covers cube A entirely
    while cube B shows; a report's outcomes split by cube A's visibility; a report of another task
    is refused."""
    import json

    from experiments import cube_visibility as vis

    seeds = [1_000_000, 1_000_013]
    px = vis.visible_pixels("StackCube-v1", ["cubeA", "cubeB"], seeds, camera_size=64, camera_fov=0.8)
    assert px.shape == (2, 2)
    assert px[0].min() > 10                      # both cubes in view at seed +0
    assert px[1, 0] == 0 and px[1, 1] > 10       # cube A behind the gripper at seed +13

    report = {"task": "StackCube-v1", "per_seed": [
        {"seed": 1_000_000, "success": True, "reached": {"is_cubeA_grasped": True}},
        {"seed": 1_000_013, "success": False, "reached": {"is_cubeA_grasped": False}},
        {"seed": 1_000_001, "success": False, "reached": {"is_cubeA_grasped": True}}]}
    split = vis.split_outcomes(report, {1_000_013}, "is_cubeA_grasped")
    assert split == {"hidden": [0, 1], "visible": [2, 2]}
    assert vis.split_outcomes(report, {1_000_013}, "success") == {"hidden": [0, 1], "visible": [1, 2]}

    path = tmp_path / "rep.json"
    path.write_text(json.dumps({**report, "task": "PickCube-v1"}))
    with pytest.raises(SystemExit, match="PickCube-v1"):
        vis.main(["--seeds", "1", "--camera-fov", "0.8", "--reports", str(path)])
    with pytest.raises(ValueError, match="no object"):
        vis.visible_pixels("StackCube-v1", ["cube"], seeds[:1])


@pytest.mark.maniskill
def test_state_offset_moves_every_field_of_an_object_consistently():
    """experiments/state_offset.py: on a real StackCube state (rgb+state_dict layout), each cube's
    offset moves its pose and every relative field with it, so ManiSkill's identities
    (tcp_to_cubeA_pos = cubeA - tcp, cubeA_to_cubeB_pos = cubeB - cubeA) still hold, the cube has
    moved by exactly the radius, horizontally, and a new episode draws a new offset; an object
    without a position field is refused."""
    import numpy as np

    from experiments import state_offset
    from envs import flatten_state
    from envs.state import state_only_obs, extra_order

    cols = state_offset.offset_columns("StackCube-v1", ["cubeA", "cubeB"])
    assert sorted(c for c, _ in cols["cubeA"]) == [25, 26, 39, 40, 45, 46]
    assert sorted(c for c, _ in cols["cubeB"]) == [32, 33, 42, 43, 45, 46]
    s = np.asarray(flatten_state(state_only_obs("StackCube-v1"), extra_order("StackCube-v1"))).reshape(1, -1)
    assert s.shape == (1, 48)

    class Echo:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return obs["state"], state

    wrapped = state_offset.OffsetStatePolicy(Echo(), cols, radius=0.02, seed=0)
    out, _ = wrapped.predict({"state": np.repeat(s, 2, 0)}, episode_start=[True, True])
    tcp, a, b = out[:, 18:21], out[:, 25:28], out[:, 32:35]
    np.testing.assert_allclose(out[:, 39:42], a - tcp, atol=1e-5)
    np.testing.assert_allclose(out[:, 42:45], b - tcp, atol=1e-5)
    np.testing.assert_allclose(out[:, 45:48], b - a, atol=1e-5)
    for shift in (a - s[:, 25:28], b - s[:, 32:35]):
        np.testing.assert_allclose(np.linalg.norm(shift[:, :2], axis=1), 0.02, atol=1e-6)
        np.testing.assert_allclose(shift[:, 2], 0, atol=1e-7)
    again, _ = wrapped.predict({"state": np.repeat(s, 2, 0)}, episode_start=[False, True])
    np.testing.assert_allclose(again[0], out[0])          # same episode, same offset
    assert not np.allclose(again[1], out[1])              # a new episode, a new direction
    with pytest.raises(ValueError, match="goal"):
        state_offset.offset_columns("StackCube-v1", ["goal"])


def test_locator_filters_are_causal_and_restart_when_the_object_moves():
    import numpy as np

    from experiments.locator_filter import gated_mean, window_mean

    rng = np.random.default_rng(0)
    rest, moved = np.array([0.1, 0.0, 0.02]), np.array([0.1, 0.2, 0.02])
    raw = np.concatenate([rest + 0.01 * rng.standard_normal((20, 3)), moved + 0.01 * rng.standard_normal((10, 3))])
    m = gated_mean(raw, gate=0.05)
    np.testing.assert_allclose(m[19], raw[:20].mean(0))            # the mean of the resting estimates
    np.testing.assert_allclose(m[-1], raw[20:].mean(0))            # restarted at the move
    np.testing.assert_allclose(gated_mean(raw[:5], 0.05), m[:5])   # causal: later frames change nothing
    w = window_mean(raw, 4)
    np.testing.assert_allclose(w[0], raw[0])
    np.testing.assert_allclose(w[10], raw[7:11].mean(0))


def test_precision_curves_compare_the_steps_both_runs_logged(tmp_path):
    from experiments.precision_curves import main

    for label, values in (("a", (0.02, 0.01)), ("b", (0.021, 0.012))):
        (tmp_path / label).mkdir()
        rows = ["step,name,value,time", f"50,val/action_mse,{values[0]},0", f"100,val/action_mse,{values[1]},0",
                "100,train/loss,1.0,0"]
        if label == "b":
            rows.append("150,val/action_mse,0.5,0")  # a step the reference never logged: left out
        (tmp_path / label / "metrics.csv").write_text("\n".join(rows) + "\n")
    report = main(["--runs", f"fp32={tmp_path / 'a'}", f"bf16={tmp_path / 'b'}", "--metrics", "val/action_mse",
                   "--png", str(tmp_path / "c.png"), "--out", str(tmp_path / "c.json")])
    r = report["val/action_mse"]
    assert r["steps"] == [50, 100] and r["bf16"] == [0.021, 0.012]
    assert abs(r["max_abs_diff"] - 0.002) < 1e-9 and abs(r["max_rel_diff"] - 0.2) < 1e-9
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_data_efficiency_plans_par_train_runs_and_reports_paired_points(tmp_path):
    """experiments/data_efficiency.py: each point is par-train's own command line with --train-episodes;
    reused points land in place; the report pairs the two arms seed by seed and draws the figure."""
    import json

    from experiments import data_efficiency as de
    from par_agent.training.args import parse_args

    train, evaluate = de.commands("data/pickcube-ee-fov08", tmp_path, "video", 25, "VIDEO", 100, 2, "bf16")
    args = parse_args(train[3:])
    assert args.stage == "finetune" and args.train_episodes == 25 and args.init == "VIDEO"
    assert args.steps == 4500 and args.batch_size == 16 and args.out == tmp_path / "video-25"
    assert evaluate[evaluate.index("--policy") + 1] == str(tmp_path / "video-25" / "finetune" / "final")

    def report(successes):
        rate = sum(successes) / len(successes)
        return {"success_rate": rate, "ci95": [rate / 2, (1 + rate) / 2], "n_episodes": len(successes),
                "subgoal_rates": {"is_grasped": 0.5}, "policy": {"name": "p"},
                "per_seed": [{"seed": 1_000_000 + i, "success": s, "reached": {"is_grasped": s or i == 0}}
                             for i, s in enumerate(successes)]}

    for arm, succ in (("video", [1, 1, 1, 0, 1, 1]), ("no-video", [0, 0, 1, 0, 0, 1])):
        (tmp_path / f"{arm}.json").write_text(json.dumps(report([bool(s) for s in succ])))
    de.main(["run", "--out", str(tmp_path / "runs"), "--video", "V", "--tokenizer", "T", "--counts", "225",
             "--reuse", f"video:225={tmp_path / 'video.json'}", f"no-video:225={tmp_path / 'no-video.json'}"])
    assert json.loads((tmp_path / "runs" / "video-225" / "eval.json").read_text())["reused_from"].endswith("video.json")
    de.main(["report", "--out", str(tmp_path / "runs"), "--png", str(tmp_path / "d.png"),
             "--report", str(tmp_path / "d.json")])
    summary = json.loads((tmp_path / "d.json").read_text())
    assert summary["points"]["video"]["225"]["success_rate"] == 5 / 6
    pair = summary["paired_video_vs_no_video"]["225"]
    assert (pair["seeds"], pair["only_first"], pair["only_second"]) == (6, 3, 0)
    assert abs(pair["sign_test_p"] - 0.25) < 1e-9
    grasp = summary["paired_grasped_video_vs_no_video"]["225"]
    assert (grasp["only_first"], grasp["only_second"]) == (2, 0)
    lo, hi = summary["points"]["video"]["225"]["grasped_ci95"]
    assert lo < 0.5 < hi
    assert (tmp_path / "d.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="ARM:N=REPORT"):
        de.parse_reuse(["video=x.json"])


def test_compare_joins_a_policys_reports_and_pairs_policies_seed_by_seed(tmp_path):
    """experiments/compare.py: reports on disjoint seeds join into one policy; each policy is paired
    with the first on success and subgoals; overlapping seeds, another task and a missing file are
    refused by name."""
    import json

    from experiments import compare

    def report(path, first_seed, successes, task="StackCube-v1"):
        rows = [{"seed": first_seed + i, "success": bool(s), "reached": {"is_grasped": bool(s) or i % 2 == 0}}
                for i, s in enumerate(successes)]
        path.write_text(json.dumps({"task": task, "per_seed": rows}))
        return str(path)

    a1 = report(tmp_path / "a1.json", 0, [1, 1, 0])
    a2 = report(tmp_path / "a2.json", 3, [1, 0, 0])
    b = report(tmp_path / "b.json", 0, [0, 1, 0, 0, 0, 1])
    s = compare.main([f"par={a1}+{a2}", f"dp={b}", "--subgoals", "is_grasped", "--out", str(tmp_path / "c.json")])
    assert json.loads((tmp_path / "c.json").read_text()) == s
    par, dp = s["policies"]["par"], s["policies"]["dp"]
    assert par["episodes"] == 6 and par["seeds"] == [0, 5] and par["success"]["count"] == 3
    assert par["success"]["ci95"][0] < 0.5 < par["success"]["ci95"][1]
    # par alone solves seeds 0 and 3, dp alone seed 5; grasps: par 0,1,2,3,4 / dp 0,1,2,4,5
    assert dp["paired"]["success"] == {"seeds": 6, "only_first": 2, "only_second": 1, "sign_test_p": 1.0}
    assert (dp["paired"]["is_grasped"]["only_first"], dp["paired"]["is_grasped"]["only_second"]) == (1, 1)
    # an unfinished par-eval's episode log: its finished episodes, a line cut by the interruption left out
    log = tmp_path / "b.json.episodes.jsonl"
    rows = json.loads((tmp_path / "b.json").read_text())["per_seed"]
    log.write_text("\n".join(json.dumps(x) for x in [{"run": {"task": "StackCube-v1"}}, *rows[:4]]) + '\n{"seed": 4, "suc')
    part = compare.main([f"par={a1}+{a2}", f"dp={log}"])["policies"]["dp"]
    assert part["episodes"] == 4 and part["paired"]["success"]["seeds"] == 4
    with pytest.raises(SystemExit, match="seed 0 is in two of"):
        compare.main([f"par={a1}+{a1}", f"dp={b}"])
    with pytest.raises(SystemExit, match="different tasks"):
        compare.main([f"par={a1}", f"dp={report(tmp_path / 'p.json', 0, [1], task='PickCube-v1')}"])
    with pytest.raises(SystemExit, match="no report at"):
        compare.main([f"par={tmp_path / 'missing.json'}", f"dp={b}"])
    assert not (tmp_path / "missing.json").exists()
