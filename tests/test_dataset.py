"""PhysicalStepDataset: the window contract with the model, statistics, splits, sources, errors."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import flatten_state
from helpers import write_fake_h5
from par_agent.data.dataset import PhysicalStepDataset, demo_h5_files, split_episodes


# ----------------------------------------------------------------------------- synthetic: the contract


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 23), min_size=1, max_size=3), K=st.integers(1, 5), T=st.integers(2, 5))
def test_window_contract_property(tmp_path_factory, lengths, K, T):
    path = write_fake_h5(tmp_path_factory.mktemp("fake") / "d.h5", lengths)
    ds = PhysicalStepDataset(path, history=T, chunk_size=K, split="all")
    with h5py.File(path) as f:
        acts = [f[f"traj_{i}/actions"][()] for i in range(len(lengths))]
    Ns = [math.ceil(L / K) for L in lengths]
    assert len(ds) == sum(N + 1 for N in Ns)
    idx = 0
    for e, (L, N) in enumerate(zip(lengths, Ns)):
        for s in range(N + 1):
            item = ds[idx]
            idx += 1
            assert item["frames"].shape == (T, 8, 8, 3) and item["frames"].dtype == torch.uint8
            assert item["actions"].shape == (T - 1, K, 3) and item["actions"].dtype == torch.float32
            assert item["state"].shape == (T, 12) and item["state"].dtype == torch.float32
            fm, am = item["frame_mask"].numpy(), item["action_mask"].numpy()
            for i in range(T):
                n = s + i
                assert fm[i] == (n <= N)
                # frame value encodes the control step: o_n = obs[min(nK, L)], padding repeats o_N
                assert int(item["frames"][i, 0, 0, 0]) == min(min(n, N) * K, L)
            for i in range(T - 1):
                n = s + i
                for k in range(K):
                    t = n * K + k
                    assert am[i, k] == (n < N and t < L)
                    expected = acts[e][t] if (n < N and t < L) else acts[e][-1]
                    np.testing.assert_array_equal(item["actions"][i, k].numpy(), expected)
            assert item["task_id"].dtype == torch.int64 and item["task_id"].ndim == 0


def test_split_is_by_episode_disjoint_and_deterministic(tmp_path):
    path = write_fake_h5(tmp_path / "d.h5", [5] * 10)
    tr = PhysicalStepDataset(path, history=2, chunk_size=2, split="train", val_fraction=0.3)
    va = PhysicalStepDataset(path, history=2, chunk_size=2, split="val", val_fraction=0.3, stats=tr.stats)
    al = PhysicalStepDataset(path, history=2, chunk_size=2, split="all", val_fraction=0.3)
    assert len(va.episode_keys) == 3 and len(tr.episode_keys) == 7
    assert not set(tr.episode_keys) & set(va.episode_keys)
    assert set(tr.episode_keys) | set(va.episode_keys) == set(al.episode_keys)
    assert split_episodes(al.episode_keys[::-1], 0.3)[1] != [] and \
        PhysicalStepDataset(path, history=2, chunk_size=2, split="val", val_fraction=0.3).episode_keys == va.episode_keys
    assert va.stats is tr.stats
    # stats are from the train split: recompute by hand
    with h5py.File(path) as f:
        train_ids = [int(k.split("traj_")[1]) for k in tr.episode_keys]
        a = np.concatenate([f[f"traj_{i}/actions"][()] for i in train_ids])
        # no task recorded: the file's own (h5py's alphabetical) order of the extra fields
        s = np.concatenate([flatten_state({"agent": {k: f[f"traj_{i}/obs/agent/{k}"][()] for k in ("qpos", "qvel")},
                                           "extra": {k: f[f"traj_{i}/obs/extra/{k}"][()] for k in ("is_grasped", "tcp_pose")}})
                            for i in train_ids])
    np.testing.assert_allclose(tr.stats["action_min"], a.min(0))
    np.testing.assert_allclose(tr.stats["action_max"], a.max(0))
    np.testing.assert_allclose(tr.stats["state_mean"], s.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr.stats["state_std"], np.maximum(s.std(0), 1e-6), rtol=1e-4, atol=1e-6)
    assert all(tr.stats[k].dtype == np.float32 for k in ("action_min", "action_max", "state_mean", "state_std"))
    assert tr.stats["num_episodes"] == 7 and tr.stats["num_windows"] == len(tr)
    assert al.stats["num_episodes"] == 7  # statistics always come from the train split


def test_train_episodes_nest_and_keep_the_held_out_split(tmp_path):
    """--train-episodes N: the first N training episodes in the source's order (so 3 lies in 5), the
    statistics from those alone, the held-out episodes unchanged; a count the data lacks is an error."""
    path = write_fake_h5(tmp_path / "d.h5", [3, 5, 4, 6, 2, 7, 5, 4, 3, 6])
    kw = dict(history=2, chunk_size=2, val_fraction=0.3)
    full = PhysicalStepDataset(path, split="train", **kw)
    five = PhysicalStepDataset(path, split="train", train_episodes=5, **kw)
    three = PhysicalStepDataset(path, split="train", train_episodes=3, **kw)
    assert three.episode_keys == five.episode_keys[:3] == full.episode_keys[:3]
    assert three.stats["num_episodes"] == 3 and len(three) == three.stats["num_windows"] < len(five)
    with h5py.File(path) as f:
        a = np.concatenate([f[k.split("/")[-1] + "/actions"][()] for k in three.episode_keys])
    np.testing.assert_allclose(three.stats["action_min"], a.min(0))
    np.testing.assert_allclose(three.stats["action_max"], a.max(0))
    val = PhysicalStepDataset(path, split="val", stats=three.stats, **kw)
    assert val.episode_keys == PhysicalStepDataset(path, split="val", **kw).episode_keys
    assert not set(val.episode_keys) & set(full.episode_keys)
    with pytest.raises(ValueError, match="train_episodes=8.*7 training episodes.*1..7"):
        PhysicalStepDataset(path, split="train", train_episodes=8, **kw)
    with pytest.raises(ValueError, match="train_episodes=0"):
        PhysicalStepDataset(path, split="train", train_episodes=0, **kw)


def test_read_video_falls_back_to_opencv(tmp_video_folder, monkeypatch):
    """Without imageio-ffmpeg (a GPU image with its own Python) a compact folder's videos are read with
    OpenCV, frame for frame as ffmpeg reads them; without either, one error names both."""
    import sys

    from par_agent.data.compact import read_video

    path = tmp_video_folder / "clip_1.mp4"
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg is not installed: nothing to compare OpenCV with")
    by_ffmpeg = read_video(path)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails
    pytest.importorskip("cv2", reason="OpenCV is not installed: the fallback decoder cannot be compared")
    frames = read_video(path)
    assert frames.shape == (13, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, by_ffmpeg)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="imageio-ffmpeg.*opencv-python-headless"):
        read_video(path)


def test_frames_only_from_video_folder(tmp_video_folder):
    from par_agent.data.compact import read_video

    ds = PhysicalStepDataset(tmp_video_folder, history=3, chunk_size=4, frames_only=True, task_id=2)
    # clips of 9, 13, 17 frames -> N = 2, 3, 4 -> 3 + 4 + 5 windows
    assert len(ds) == 12
    item = ds[0]
    assert {"frames", "frame_mask", "task_id"} <= set(item)
    assert not {"state", "actions", "action_mask"} & set(item)
    assert item["frames"].shape == (3, 64, 64, 3) and item["task_id"].item() == 2
    clip = read_video(tmp_video_folder / "clip_0.mp4")
    np.testing.assert_array_equal(item["frames"].numpy(), clip[[0, 4, 8]])
    assert ds[2]["frame_mask"].tolist() == [True, False, False]
    small = PhysicalStepDataset(tmp_video_folder, history=2, chunk_size=4, frames_only=True, image_size=32)
    assert small[0]["frames"].shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="frames_only=True"):
        PhysicalStepDataset(tmp_video_folder, history=2, chunk_size=4)


# ----------------------------------------------------------------------------- real demos


@pytest.mark.maniskill
def test_real_demo_windows(pushcube_demos):
    ds = PhysicalStepDataset(pushcube_demos, history=4, chunk_size=4, split="all")
    with h5py.File(pushcube_demos) as f:
        g = f["traj_0"]
        L = g["actions"].shape[0]
        obs = {k: {kk: g[f"obs/{k}/{kk}"][()] for kk in g[f"obs/{k}"]} for k in ("agent", "extra")}
        state = flatten_state(obs)
        item = ds[0]
        np.testing.assert_array_equal(item["frames"].numpy(), g["obs/sensor_data/base_camera/rgb"][[0, 4, 8, 12]])
        np.testing.assert_array_equal(item["state"].numpy(), state[[0, 4, 8, 12]])
        np.testing.assert_array_equal(item["actions"].numpy(), g["actions"][:12].reshape(3, 4, 8))
        assert item["frame_mask"].all() and item["action_mask"].all()
        N = math.ceil(L / 4)
        last = ds[N]  # window starting at the final observation of episode 0
        assert last["frame_mask"].tolist() == [True, False, False, False] and not last["action_mask"].any()
        np.testing.assert_array_equal(last["frames"][0].numpy(), g["obs/sensor_data/base_camera/rgb"][L])
    assert item["state"].shape == (4, 25) and ds.stats["state_mean"].shape == (25,)
    assert ds.stats["action_min"].shape == (8,) and (ds.stats["state_std"] >= 1e-6).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 4, 128, 128, 3) and batch["actions"].shape == (8, 3, 4, 8)
    fo = PhysicalStepDataset(pushcube_demos, history=4, chunk_size=4, frames_only=True)
    assert "actions" not in fo[0] and "action_mask" not in fo[0] and len(fo) == len(ds)


@pytest.mark.maniskill
def test_env_and_dataset_states_match(pushcube_demos):
    """The env wrapper and the dataset build o_0 the same way for the same episode seed."""
    from mani_skill.utils.io_utils import load_json

    from envs import make_env

    seed = load_json(str(pushcube_demos.with_suffix(".json")))["episodes"][0]["episode_seed"]
    ds = PhysicalStepDataset(pushcube_demos, history=2, chunk_size=4)
    env = make_env("PushCube-v1", camera_size=128)
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    np.testing.assert_allclose(obs["state"], ds[0]["state"][0].numpy(), atol=1e-6)
    assert np.abs(obs["rgb"].astype(int) - ds[0]["frames"][0].numpy().astype(int)).mean() < 1.0


@pytest.mark.maniskill
def test_compact_folder_source_matches_h5(pushcube_demos, tmp_path):
    from par_agent.data.compact import export_compact

    compact = export_compact(pushcube_demos, tmp_path / "c")
    a = PhysicalStepDataset(pushcube_demos, history=3, chunk_size=4)
    b = PhysicalStepDataset(compact, history=3, chunk_size=4)
    assert len(a) == len(b)
    for i in (0, len(a) - 1):
        np.testing.assert_array_equal(a[i]["actions"].numpy(), b[i]["actions"].numpy())
        np.testing.assert_array_equal(a[i]["state"].numpy(), b[i]["state"].numpy())
        assert (a[i]["frames"].float() - b[i]["frames"].float()).abs().mean() < 3.0


# ----------------------------------------------------------------------------- bad inputs


def test_folder_source_skips_collect_chunks(tmp_path):
    """A folder is read as every .h5 below it except par-collect's chunks/ (already merged)."""
    (tmp_path / "A" / "chunks").mkdir(parents=True)
    (tmp_path / "B").mkdir()
    a = write_fake_h5(tmp_path / "A" / "trajectory.h5", [5, 6])
    write_fake_h5(tmp_path / "A" / "chunks" / "chunk_0.h5", [5])
    b = write_fake_h5(tmp_path / "B" / "trajectory.h5", [7])
    (tmp_path / "B" / "notes.txt").write_text("not a demo")
    assert demo_h5_files(tmp_path) == [a, b]
    assert demo_h5_files(a) == [a] and demo_h5_files(tmp_path / "B" / "notes.txt") == []
    ds = PhysicalStepDataset(tmp_path, history=2, chunk_size=2, split="all", image_size=8)
    assert ds.num_episodes == 3


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        PhysicalStepDataset(missing, history=2, chunk_size=2)


def test_truncated_and_corrupt_h5_name_the_file(tmp_path):
    good = write_fake_h5(tmp_path / "good.h5", [30, 30], hw=32)
    data = good.read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.h5.*(truncated|corrupt)"):
        PhysicalStepDataset(tmp_path / "truncated.h5", history=2, chunk_size=2)
    (tmp_path / "corrupt.h5").write_bytes(b"this is not an hdf5 file" * 100)
    with pytest.raises(ValueError, match="corrupt.h5"):
        PhysicalStepDataset(tmp_path / "corrupt.h5", history=2, chunk_size=2)


def test_h5_without_rgb_says_how_to_collect(tmp_path):
    path = write_fake_h5(tmp_path / "state_only.h5", [5], rgb=False)
    with pytest.raises(ValueError, match="state_only.h5.*rgb.*par-collect"):
        PhysicalStepDataset(path, history=2, chunk_size=2)


def test_empty_video_folder_names_it(tmp_path):
    folder = tmp_path / "empty_videos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="empty_videos.*no videos"):
        PhysicalStepDataset(folder, history=2, chunk_size=2, frames_only=True)


def test_bad_arguments(tmp_path):
    path = write_fake_h5(tmp_path / "d.h5", [5, 5])
    with pytest.raises(ValueError, match="split"):
        PhysicalStepDataset(path, history=2, chunk_size=2, split="test")
    with pytest.raises(ValueError, match="history"):
        PhysicalStepDataset(path, history=1, chunk_size=2)


@pytest.mark.maniskill
def test_stored_pickcube_state_is_what_make_env_gives(pickcube_demo):
    """The .h5 lists PickCube's extra fields alphabetically; the dataset reads them back in ManiSkill's
    order, so a model trained on stored demos sees the env's state layout (goal_pos last)."""
    import json

    from envs import make_env

    ds = PhysicalStepDataset(pickcube_demo, history=2, chunk_size=2, split="all")
    seed = json.loads(pickcube_demo.with_suffix(".json").read_text())["episodes"][0]["episode_seed"]
    env = make_env("PickCube-v1", camera_size=32)
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    np.testing.assert_allclose(ds[0]["state"][0].numpy(), obs["state"], atol=1e-6)
    np.testing.assert_array_equal(ds[0]["frames"][0].numpy(), obs["rgb"])
    with h5py.File(pickcube_demo) as f:
        np.testing.assert_array_equal(ds[0]["state"][0, -3:].numpy(), f["traj_0/obs/extra/goal_pos"][0])


def test_non_square_videos_are_center_cropped(tmp_path):
    """Plain videos of any aspect: the centre square of each frame, then the model's size."""
    import imageio.v2 as imageio

    folder = tmp_path / "wide"
    folder.mkdir()
    frames = np.zeros((9, 32, 64, 3), np.uint8)
    frames[:, :, 16:48] = 200  # the centre square is bright, the sides dark
    imageio.mimwrite(folder / "wide.mp4", list(frames), fps=20, codec="libx264", quality=None,
                     output_params=["-crf", "0"], macro_block_size=1)
    ds = PhysicalStepDataset(folder, history=2, chunk_size=4, frames_only=True, image_size=16)
    f = ds[0]["frames"].numpy()
    assert f.shape == (2, 16, 16, 3)
    assert f.min() > 150  # only the centre square was kept


def test_frame_size_mismatch_names_the_file(tmp_path):
    import imageio.v2 as imageio

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, size in (("a.mp4", 32), ("b.mp4", 48)):
        imageio.mimwrite(folder / name, [np.zeros((size, size, 3), np.uint8)] * 9, fps=20, macro_block_size=1)
    with pytest.raises(ValueError, match=r"b\.mp4.*same frame size"):
        PhysicalStepDataset(folder, history=2, chunk_size=4, frames_only=True)


def test_demos_of_two_control_modes_are_refused(pickcube_ee_demo):
    """A ManiSkill folder often holds a pd_joint_pos file beside its conversion: reading the folder names
    both modes instead of mixing 8-d joint targets with 4-d end-effector deltas; one file reads."""
    folder = pickcube_ee_demo.parent
    with pytest.raises(ValueError, match=r"2 control modes.*pd_ee_delta_pos.*pd_joint_pos"):
        PhysicalStepDataset(folder, history=2, chunk_size=4)
    ds = PhysicalStepDataset(pickcube_ee_demo, history=2, chunk_size=4)
    assert ds.actions.shape[1] == 4
    assert len(PhysicalStepDataset(folder, history=2, chunk_size=4, frames_only=True)) > 0  # frames mix fine


def test_training_statistics_pool_every_source(tmp_path):
    """par-train normalises with the statistics of every --data source's training episodes together,
    not the first source's: the action range spans both, and the pooled state mean and std equal those
    of one dataset over both files."""
    from par_agent.config import PARConfig
    from par_agent.data.dataset import merge_stats
    from par_agent.training.args import TrainArgs
    from par_agent.training.data import build_datasets

    cfg = PARConfig.named("tiny", history=2, chunk_size=2)
    a = write_fake_h5(tmp_path / "a.h5", [5, 7, 6], hw=cfg.image_size, seed=1)
    b = write_fake_h5(tmp_path / "b.h5", [9, 4], hw=cfg.image_size, seed=2)
    with h5py.File(b, "a") as f:  # the second source acts and sits elsewhere
        for g in f.values():
            g["actions"][...] = 3.0 * g["actions"][()] + 1.0
            g["obs/agent/qpos"][...] = g["obs/agent/qpos"][()] - 2.0
    kw = dict(history=2, chunk_size=2, split="train", val_fraction=0.0)
    both = PhysicalStepDataset([a, b], **kw).stats
    merged = merge_stats([PhysicalStepDataset(a, **kw).stats, PhysicalStepDataset(b, **kw).stats])
    for k in ("action_min", "action_max", "state_mean", "state_std"):
        np.testing.assert_allclose(merged[k], both[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert merged["num_episodes"] == 5 and merged["num_states"] == both["num_states"] == 36

    args = TrainArgs(stage="finetune", data=(str(a), str(b)), out=str(tmp_path / "o"), val_fraction=0.0,
                     cameras=("base_camera",))
    train, _, stats = build_datasets(args, cfg, None)
    first = PhysicalStepDataset(a, **kw).stats
    assert (stats["action_max"] > first["action_max"]).any()  # not the first source's range
    np.testing.assert_allclose(stats["state_mean"], both["state_mean"], rtol=1e-5, atol=1e-5)
    assert stats["num_episodes"] == 5 and len(train) == stats["num_windows"]


def test_statistics_of_different_layouts_are_refused_by_name():
    from par_agent.data.dataset import merge_stats

    one = {"action_min": np.zeros(3), "action_max": np.ones(3), "state_mean": np.zeros(25),
           "state_std": np.ones(25), "num_states": 10, "num_episodes": 1, "num_windows": 3}
    other = {**one, "state_mean": np.zeros(29), "state_std": np.ones(29)}
    with pytest.raises(ValueError, match=r"state_mean.*pick\.h5.*stack\.h5"):
        merge_stats([one, other], ["pick.h5", "stack.h5"])
    assert merge_stats([one, one], ["a.h5", "a.h5"])["num_states"] == 20  # one source given twice is no error
    with pytest.raises(ValueError, match="num_states"):
        merge_stats([one, {k: v for k, v in one.items() if k != "num_states"}], ["a", "b"])
