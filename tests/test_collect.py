"""par-collect end to end (real motion planning, real rendering) and the compact format."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.maniskill


def test_collected_h5_opens_with_maniskill_tools(pushcube_demos):
    from mani_skill.trajectory.dataset import load_h5_data
    from mani_skill.trajectory.utils import index_dict
    from mani_skill.utils.io_utils import load_json

    meta = load_json(str(pushcube_demos.with_suffix(".json")))
    assert meta["env_info"]["env_id"] == "PushCube-v1"
    assert meta["env_info"]["env_kwargs"]["obs_mode"] == "rgb"
    assert meta["env_info"]["env_kwargs"]["control_mode"] == "pd_joint_pos"
    assert meta["env_info"]["max_episode_steps"] == 100
    eps = meta["episodes"]
    assert len(eps) == 2 and all(ep["success"] for ep in eps)
    seeds = [ep["episode_seed"] for ep in eps]
    assert len(set(seeds)) == 2
    with h5py.File(pushcube_demos, "r") as f:
        assert sorted(f.keys()) == ["traj_0", "traj_1"]
        for ep in eps:
            g = f[f"traj_{ep['episode_id']}"]
            traj = load_h5_data(g)
            L = ep["elapsed_steps"]
            assert traj["actions"].shape == (L, 8) and traj["actions"].dtype == np.float32
            rgb = traj["obs"]["sensor_data"]["base_camera"]["rgb"]
            assert rgb.shape == (L + 1, 128, 128, 3) and rgb.dtype == np.uint8 and rgb.std() > 10
            assert traj["obs"]["agent"]["qpos"].shape == (L + 1, 9)
            assert "env_states" in traj and bool(traj["success"][-1])
            assert index_dict(traj["obs"], 0)["agent"]["qpos"].shape == (9,)


def test_collect_records_only_the_asked_cameras(tmp_path):
    """By default only base_camera (what PAR reads) is rendered and recorded; --cameras all keeps
    StackCube's hand_camera too, and a top-up with it merges into the same file."""
    from par_agent.data.collect import main, trajectory_path

    args = ["--task", "StackCube-v1", "--out", str(tmp_path), "--camera-size", "32", "--no-progress"]
    assert main(args + ["--num-demos", "1"]) == 0
    assert main(args + ["--num-demos", "2", "--cameras", "all"]) == 0
    with h5py.File(trajectory_path(tmp_path, "StackCube-v1"), "r") as f:
        assert sorted(f.keys()) == ["traj_0", "traj_1"]
        assert sorted(f["traj_0/obs/sensor_data"]) == ["base_camera"]
        assert sorted(f["traj_1/obs/sensor_data"]) == ["base_camera", "hand_camera"]
        for k in ("traj_0", "traj_1"):
            rgb = f[k]["obs/sensor_data/base_camera/rgb"]
            assert rgb.shape[1:] == (32, 32, 3) and rgb[()].std() > 10


def test_collect_resumes(demo_copy):
    """A second run over the same --out tops the file up to --num-demos with new seeds."""
    from mani_skill.utils.io_utils import load_json

    from par_agent.data.collect import main, trajectory_path

    # lay the copy out as par-collect would: OUT/TASK/motionplanning/<file>
    target = trajectory_path(demo_copy.parent / "out", "PushCube-v1")
    target.parent.mkdir(parents=True)
    demo_copy.rename(target)
    demo_copy.with_suffix(".json").rename(target.with_suffix(".json"))
    before = [ep["episode_seed"] for ep in load_json(str(target.with_suffix(".json")))["episodes"]]
    assert main(["--task", "PushCube-v1", "--num-demos", "3", "--out", str(demo_copy.parent / "out"),
                 "--workers", "1", "--no-progress"]) == 0
    eps = load_json(str(target.with_suffix(".json")))["episodes"]
    seeds = [ep["episode_seed"] for ep in eps]
    assert len(eps) == 3 and seeds[:2] == before and seeds[2] > max(before)
    with h5py.File(target, "r") as f:
        assert sorted(f.keys()) == ["traj_0", "traj_1", "traj_2"]
        # the old episodes were carried over intact
        assert f["traj_0/actions"].shape[0] == eps[0]["elapsed_steps"]
    assert not list(target.parent.glob("chunks/*.h5"))  # chunks merged away
    # asking for fewer than present is a no-op
    assert main(["--task", "PushCube-v1", "--num-demos", "2", "--out", str(demo_copy.parent / "out"),
                 "--no-progress"]) == 0
    assert len(load_json(str(target.with_suffix(".json")))["episodes"]) == 3


def test_compact_round_trip(pushcube_demos, tmp_path):
    from par_agent.data.compact import export_compact, import_compact

    out = export_compact(pushcube_demos, tmp_path / "compact")
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < 2 * 150_000, f"compact form too large: {size} bytes for 2 demos"
    back = import_compact(out, tmp_path / "back" / "trajectory.h5")
    episodes = import_compact(out)
    with h5py.File(pushcube_demos, "r") as a, h5py.File(back, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for i, k in enumerate(sorted(a.keys(), key=lambda s: int(s[5:]))):
            np.testing.assert_array_equal(a[k]["actions"][()], b[k]["actions"][()])
            np.testing.assert_array_equal(a[k]["obs/agent/qpos"][()], b[k]["obs/agent/qpos"][()])
            np.testing.assert_array_equal(a[k]["env_states/actors/cube"][()], b[k]["env_states/actors/cube"][()])
            fa = a[k]["obs/sensor_data/base_camera/rgb"][()].astype(np.float32)
            fb = b[k]["obs/sensor_data/base_camera/rgb"][()].astype(np.float32)
            assert fa.shape == fb.shape
            assert np.abs(fa - fb).mean() < 3.0, "mean abs frame error must stay below 3/255"
            np.testing.assert_array_equal(episodes[i]["actions"], a[k]["actions"][()])
    from mani_skill.utils.io_utils import load_json

    assert [e["episode_seed"] for e in load_json(str(back.with_suffix(".json")))["episodes"]] == \
        [e["episode_seed"] for e in load_json(str(pushcube_demos.with_suffix(".json")))["episodes"]]


def test_compact_without_simulator_states_trains_the_same(pushcube_demos, tmp_path):
    """export_compact(drop=...) leaves the simulator states and camera parameters out (smaller, to
    carry to another machine); the dataset built from it is the full compact form's, item for item."""
    from par_agent.data import PhysicalStepDataset
    from par_agent.data.compact import export_compact, read_compact_meta

    full = export_compact(pushcube_demos, tmp_path / "full")
    lean = export_compact(pushcube_demos, tmp_path / "lean", drop=("env_states", "obs/sensor_param/"))
    keys = set(np.load(lean / "traj_0.npz"))
    assert keys and not any(k.startswith(("env_states/", "obs/sensor_param/")) for k in keys)
    assert "obs/agent/qpos" in keys and "actions" in keys
    assert read_compact_meta(lean)["dropped"] == ["env_states", "obs/sensor_param/"]
    size = lambda d: sum(f.stat().st_size for f in d.iterdir())  # noqa: E731
    assert size(lean) < size(full)
    a, b = (PhysicalStepDataset(d, history=3, chunk_size=4) for d in (full, lean))
    assert len(a) == len(b) > 0
    for i in (0, len(a) - 1):
        for k, v in a[i].items():
            torch.testing.assert_close(v, b[i][k], rtol=0, atol=0)


def test_collect_rejects_task_without_solution(tmp_path):
    from par_agent.data.collect import collect

    with pytest.raises(ValueError, match="no motion-planning solution"):
        collect("OpenCabinetDrawer-v1", 1, tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        collect("NoSuchTask-v0", 1, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["PickCube-v1", "StackCube-v1"])
def test_collect_other_tasks(task, tmp_path):
    from par_agent.data.collect import main, trajectory_path
    from par_agent.data.dataset import PhysicalStepDataset

    assert main(["--task", task, "--num-demos", "2", "--out", str(tmp_path), "--workers", "2", "--no-progress"]) == 0
    path = trajectory_path(tmp_path, task)
    ds = PhysicalStepDataset(path, history=4, chunk_size=4)
    assert ds[0]["state"].shape[-1] == {"PickCube-v1": 29, "StackCube-v1": 25}[task]


@pytest.mark.slow
def test_collect_two_workers(tmp_path):
    from mani_skill.utils.io_utils import load_json

    from par_agent.data.collect import main, trajectory_path

    assert main(["--task", "PushCube-v1", "--num-demos", "4", "--out", str(tmp_path), "--workers", "2",
                 "--chunk-size", "1", "--no-progress"]) == 0
    eps = load_json(str(trajectory_path(tmp_path, "PushCube-v1").with_suffix(".json")))["episodes"]
    assert len(eps) == 4 and len({e["episode_seed"] for e in eps}) == 4


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None if PID is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _running(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has exited


def _workers_of(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        stat = _proc_stat(int(d.name)) if d.name.isdigit() else None
        if stat is not None and int(stat[1]) == pid and b"spawn_main" in (d / "cmdline").read_bytes():
            kids.append(int(d.name))
    return kids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_collect_leaves_no_workers(sig, tmp_path):
    """Killing par-collect stops its workers: on SIGTERM at once, on SIGKILL after their current attempt.

    An orphaned worker would keep collecting and write the same chunk names as the next run."""
    from par_agent.data.collect import trajectory_path

    chunks = trajectory_path(tmp_path, "PushCube-v1").parent / "chunks"
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "par_agent.data.collect", "--task", "PushCube-v1",
                                 "--num-demos", "40", "--out", str(tmp_path), "--workers", "2",
                                 "--camera-size", "32", "--no-progress"], stderr=err)
        workers: list[int] = []
        try:
            deadline = time.time() + 180
            while len(list(chunks.glob("*.partial.h5"))) < 2:  # both workers are recording
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "stderr.txt").read_text()
                time.sleep(0.5)
            workers = _workers_of(proc.pid)
            assert len(workers) == 2
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == (128 + sig if sig == signal.SIGTERM else -sig)
            deadline = time.time() + 60
            while any(_running(w) for w in workers) and time.time() < deadline:
                time.sleep(0.5)
            assert not any(_running(w) for w in workers), "par-collect workers outlived it"
        finally:
            for pid in [proc.pid] + workers:  # a failing run leaves nothing behind either
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)
    if sig != signal.SIGKILL:
        return
    # run again after the hard kill: it finishes, with every demo once and no unfinished file left
    from par_agent.data.collect import main

    assert main(["--task", "PushCube-v1", "--num-demos", "4", "--out", str(tmp_path), "--workers", "2",
                 "--camera-size", "32", "--no-progress"]) == 0
    path = trajectory_path(tmp_path, "PushCube-v1")
    meta = json.loads(path.with_suffix(".json").read_text())
    seeds = [ep["episode_seed"] for ep in meta["episodes"]]
    with h5py.File(path) as f:
        assert len([k for k in f if k.startswith("traj_")]) == len(seeds) >= 4
    assert len(set(seeds)) == len(seeds), seeds
    assert not list(path.parent.rglob("*.partial*")) and not list(path.parent.rglob("*.merging*"))


def test_second_collect_into_the_same_folder_is_refused(tmp_path, capsys):
    """Two par-collect runs on one folder would delete each other's unfinished chunks and reuse seeds."""
    import fcntl

    from par_agent.data.collect import collect, trajectory_path

    chunks = trajectory_path(tmp_path, "PushCube-v1").parent / "chunks"
    chunks.mkdir(parents=True)
    (chunks / "chunk_s00000000_w0.partial.h5").write_bytes(b"another run's unfinished chunk")
    with open(chunks / ".lock", "w") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another par-collect is collecting into"):
            collect("PushCube-v1", 2, tmp_path, workers=1, progress=False)
        # the command line says it in one line, without a traceback
        from par_agent.data.collect import main

        assert main(["--task", "PushCube-v1", "--num-demos", "2", "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("par-collect: error: another par-collect is collecting into")
        assert not any("Traceback" in line for line in err)
    assert (chunks / "chunk_s00000000_w0.partial.h5").exists()  # the other run's chunk is untouched


def test_collect_in_end_effector_control(pickcube_ee_demo, capsys):
    """--control-mode pd_ee_delta_pos: the demos are converted by ManiSkill's replay tool, keep the
    source's episode limit and seeds, and a second run does not convert again."""
    import json

    from par_agent.data.collect import main, trajectory_path

    source = pickcube_ee_demo.with_name("trajectory.rgb.pd_joint_pos.h5")
    meta, src = (json.loads(p.with_suffix(".json").read_text()) for p in (pickcube_ee_demo, source))
    assert meta["env_info"]["env_kwargs"]["control_mode"] == "pd_ee_delta_pos"
    assert meta["env_info"]["max_episode_steps"] == src["env_info"]["max_episode_steps"] == 200
    assert meta["env_info"]["env_kwargs"]["sensor_configs"] == src["env_info"]["env_kwargs"]["sensor_configs"]
    assert [e["episode_seed"] for e in meta["episodes"]] == [e["episode_seed"] for e in src["episodes"]]
    assert meta["converted_from"] == {"file": source.name, "episodes": 1}
    with h5py.File(pickcube_ee_demo) as f:
        actions = f["traj_0/actions"][()]
        assert actions.shape[1] == 4 and f["traj_0/obs/sensor_data/base_camera/rgb"].shape[1:] == (32, 32, 3)
    assert np.abs(actions[:, :3]).max() <= 1.0 and set(np.unique(actions[:, 3])) <= {-1.0, 1.0}
    mtime = pickcube_ee_demo.stat().st_mtime_ns
    out = pickcube_ee_demo.parents[2]
    assert main(["--task", "PickCube-v1", "--num-demos", "1", "--out", str(out), "--camera-size", "32",
                 "--control-mode", "pd_ee_delta_pos", "--no-progress"]) == 0
    assert pickcube_ee_demo.stat().st_mtime_ns == mtime
    assert "converting" not in capsys.readouterr().err
    assert trajectory_path(out, "PickCube-v1") == source


def test_interrupted_conversion_resumes_at_its_piece(pickcube_ee_demo, tmp_path, monkeypatch):
    """A conversion stopped in its second piece keeps the first: the next run replays only the rest,
    and the merged file matches a conversion in one go (two demos of the same seed here)."""
    import json

    from mani_skill.trajectory import replay_trajectory as rt
    from mani_skill.trajectory.merge_trajectory import merge_trajectories

    from par_agent.data.convert import convert_control_mode, converted_path

    one = pickcube_ee_demo.with_name("trajectory.rgb.pd_joint_pos.h5")
    source = tmp_path / "trajectory.rgb.pd_joint_pos.h5"
    merge_trajectories(str(source), [str(one), str(one)])
    meta = json.loads(one.with_suffix(".json").read_text())
    merged = json.loads(source.with_suffix(".json").read_text())
    source.with_suffix(".json").write_text(json.dumps({**meta, "episodes": merged["episodes"]}))

    real, calls = rt.main, []

    def stop_in_second_piece(args):
        calls.append(args.traj_path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(rt, "main", stop_in_second_piece)
    with pytest.raises(KeyboardInterrupt):
        convert_control_mode(source, "pd_ee_delta_pos", chunk_size=1)
    out = converted_path(source, "pd_ee_delta_pos")
    assert not out.exists() and (tmp_path / "converting.pd_ee_delta_pos" / "000000" / "done.h5").exists()

    calls.clear()
    monkeypatch.setattr(rt, "main", lambda args: calls.append(args.traj_path) or real(args))
    assert convert_control_mode(source, "pd_ee_delta_pos", chunk_size=1) == out
    assert len(calls) == 1 and "000001" in calls[0]
    assert not (tmp_path / "converting.pd_ee_delta_pos").exists()
    new = json.loads(out.with_suffix(".json").read_text())
    assert new["converted_from"] == {"file": source.name, "episodes": 2}
    assert new["env_info"]["max_episode_steps"] == 200
    with h5py.File(out) as f, h5py.File(pickcube_ee_demo) as g:
        assert sorted(f) == ["traj_0", "traj_1"]
        for k in f:
            np.testing.assert_array_equal(f[k]["actions"][()], g["traj_0/actions"][()])


@pytest.mark.parametrize("pair", [".merging.", ".partial."])
def test_a_run_stopped_between_a_files_two_renames_loses_nothing(tmp_path, monkeypatch, pair):
    """A .h5 and its .json are renamed one after the other. Stopped between the two (in the final
    merge, or when a chunk is committed), a re-run still ends with each seed once and a .json that
    matches its .h5."""
    from mani_skill.utils.io_utils import load_json

    from par_agent.data import collect as mod

    real = os.replace
    args = ["--task", "PushCube-v1", "--out", str(tmp_path), "--camera-size", "32", "--no-progress"]

    for n in (1, 2):  # the first merge (no final file yet), then a top-up of an existing one
        renamed = []

        def stopping(src, dst):
            if pair in str(src):
                if renamed:  # the pair's second rename
                    raise KeyboardInterrupt("stopped between the two renames")
                renamed.append(src)
            return real(src, dst)

        monkeypatch.setattr(mod.os, "replace", stopping)
        with pytest.raises(KeyboardInterrupt):
            mod.main(args + ["--num-demos", str(n)])
        monkeypatch.setattr(mod.os, "replace", real)
        assert mod.main(args + ["--num-demos", str(n)]) == 0
        final = mod.trajectory_path(tmp_path, "PushCube-v1")
        eps = load_json(str(final.with_suffix(".json")))["episodes"]
        seeds = [ep["episode_seed"] for ep in eps]
        assert sorted(seeds) == list(range(n))
        with h5py.File(final) as f:
            assert sorted(f.keys()) == [f"traj_{ep['episode_id']}" for ep in eps]
            for ep in eps:
                assert f[f"traj_{ep['episode_id']}/actions"].shape[0] == ep["elapsed_steps"]


def test_a_top_up_with_other_cameras_or_noise_is_refused(tmp_path):
    """One folder, one setting: a recorded .json with other sensor_configs or another source_desc stops a top-up."""
    import json

    from par_agent.data.collect import check_same_settings

    h5 = tmp_path / "trajectory.rgb.pd_joint_pos.h5"
    cams = {"width": 64, "height": 64}
    meta = {"source_desc": "planner", "env_info": {"env_kwargs": {"sensor_configs": cams}}}
    h5.with_suffix(".json").write_text(json.dumps(meta))
    check_same_settings([h5], cams, "planner")  # the same settings: fine
    with pytest.raises(ValueError, match=r"sensor_configs=.*--camera-fov / --cameras\): use another --out"):
        check_same_settings([h5], {"width": 128, "height": 128}, "planner")
    with pytest.raises(ValueError, match=r"source_desc='planner'.*\(collect's act_wrapper\)"):
        check_same_settings([h5], cams, "planner; noise")
