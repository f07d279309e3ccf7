"""resolve_device: the one rule for device names (loading, par-train, par-eval)."""
import pytest
import torch

from par_agent.device import resolve_device


def test_auto_and_cpu():
    assert resolve_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=f"device '{name}' asked for, but CUDA is not available"):
            resolve_device(name)


def test_cuda_without_index_gets_the_local_rank(monkeypatch):
    """`par-train --device cuda` under torchrun: rank r uses cuda:r (torch.cuda.set_device needs an index)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=2) == torch.device("cuda", 2)


def test_unknown_device_name():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_from_pretrained_on_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    from helpers import tiny_model
    from par_agent import PARPolicy

    tiny_model().save_pretrained(tmp_path / "ck")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        PARPolicy.from_pretrained(str(tmp_path / "ck"), device="cuda")


def test_backend_follows_the_training_device(monkeypatch):
    """gloo for --device cpu even where CUDA exists (NCCL cannot reduce CPU tensors); NCCL for cuda."""
    import torch.distributed as dist

    from par_agent.train import dist_setup

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(backend=backend, timeout=timeout))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_setup("cpu", timeout_s=7) == (1, 2, torch.device("cpu"))
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == 7
    assert dist_setup("cuda")[2] == torch.device("cuda", 1) and seen["backend"] == "nccl"
