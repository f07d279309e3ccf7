"""examples/train_protocol.sh: which commands it runs, with par-collect / par-train / par-eval
replaced by stand-ins on PATH that log their arguments (the real ones are tested elsewhere)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_protocol.sh"


def _run(tmp_path: Path, **env: str) -> list[str]:
    """Run the script with logging stand-ins; return the logged command lines."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    for name in ("par-collect", "par-train", "par-eval"):
        stub = bin_dir / name
        stub.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n')
        stub.chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SCALE": "cpu",
                "DATA": str(tmp_path / "data"), "RUN": str(tmp_path / "run"),
                "RESULTS": str(tmp_path / "results"), **env}
    subprocess.run(["bash", str(SCRIPT)], env=full_env, check=True, capture_output=True, text=True)
    return log.read_text().splitlines() if log.exists() else []


def _mark_done(stage: Path) -> None:
    (stage / "final").mkdir(parents=True)
    (stage / "final" / "model.safetensors").write_bytes(b"")


def test_fresh_run_collects_every_task_and_trains_every_stage(tmp_path):
    calls = _run(tmp_path)
    collects = [c for c in calls if c.startswith("par-collect")]
    assert [c.split()[2] for c in collects] == ["PushCube-v1", "PickCube-v1", "StackCube-v1"]
    assert [c.split()[4] for c in collects] == ["150", "250", "120"]
    stages = [c.split()[1] for c in calls if c.startswith("par-train")]
    assert stages == ["tokenizer", "pretrain-video", "finetune", "finetune", "finetune"]
    evals = [c for c in calls if c.startswith("par-eval")]
    assert evals[0].endswith(f"{tmp_path}/results/pushcube_cpu.json")
    assert "--episodes 20" in evals[2]  # StackCube at SCALE=cpu


def test_num_demos_and_suffix_with_a_trained_video_model(tmp_path):
    _mark_done(tmp_path / "run" / "video" / "tokenizer")
    _mark_done(tmp_path / "run" / "video" / "pretrain-video")
    calls = _run(tmp_path, NUM_DEMOS="1000", TASKS="PickCube-v1", SUFFIX="_1000demos")
    # only the fine-tuned task is collected (the others only feed the trained video stage)
    assert [c for c in calls if c.startswith("par-collect")] == [
        f"par-collect --task PickCube-v1 --num-demos 1000 --out {tmp_path}/data --camera-size 64 "
        "--workers 2 --no-progress"]
    train = [c for c in calls if c.startswith("par-train")]
    assert len(train) == 1 and train[0].startswith(f"par-train finetune --data {tmp_path}/data/PickCube-v1")
    evals = [c for c in calls if c.startswith("par-eval")]
    assert len(evals) == 1 and evals[0].endswith(f"{tmp_path}/results/pickcube_cpu_1000demos.json")
