"""Demos that miss a grasp first, then retry (experiments/retry_demos.py): settings, then par-collect
with it through its act_wrapper hook (real planner, real PickCube)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from experiments.retry_demos import Miss


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.5}, r"fraction must be in \[0, 1\]"), ({"fraction": -0.1}, r"fraction must be in \[0, 1\]"),
    ({"offset": (0.05, 0.03)}, "low <= high"), ({"offset": (0.0, 0.03)}, "0 < low"),
])
def test_bad_miss_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Miss(**kwargs)


@pytest.mark.maniskill
def test_a_retry_demo_closes_beside_the_cube_then_grasps_it_and_succeeds(tmp_path, capsys):
    """The recorded episode closes the gripper without the cube (is_grasped stays 0 while the fingers
    shut), grasps it later, ends in success, and is longer than the same seed's plain demo; the
    folder remembers the setting."""
    from mani_skill.utils.io_utils import load_json

    from experiments.retry_demos import main
    from par_agent.data.collect import main as collect_main
    from par_agent.data.collect import trajectory_path

    common = ["--task", "PickCube-v1", "--camera-size", "32", "--no-progress", "--num-demos", "1"]
    assert collect_main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out", str(tmp_path / "retry"), "--miss-fraction", "1"]) == 0
    plain, retry = trajectory_path(tmp_path / "plain", "PickCube-v1"), trajectory_path(tmp_path / "retry", "PickCube-v1")
    meta = load_json(str(retry.with_suffix(".json")))
    assert "missed grasp first in 1" in meta["source_desc"] and meta["episodes"][0]["success"]
    with h5py.File(plain) as fp, h5py.File(retry) as fr:
        n_plain = len(fp["traj_0/actions"])
        actions = fr["traj_0/actions"][()]
        grasped = fr["traj_0/obs/extra/is_grasped"][()].reshape(-1)
    closing = np.flatnonzero(actions[:, -1] < 0)  # the gripper command: -1 closes
    assert len(closing) and not grasped[: closing[0] + 7].any()  # the first close shuts on air
    assert grasped[-1] and len(actions) > n_plain + 20

    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "x"), "--miss-fraction", "2"]) == 2
    assert "fraction must be in [0, 1]" in capsys.readouterr().err
