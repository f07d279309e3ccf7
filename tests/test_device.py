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

    from par_agent.training.distributed import dist_setup

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


# ----------------------------------------------------------------------------- a simulated second device
# PyTorch's meta device stands for a GPU (benchmarks/count_syncs.py): mixing its tensors with CPU ones
# raises, as CUDA does, and the SimulatedDevice mode counts every op that would make the host wait.

@pytest.mark.parametrize("stage", ["tokenizer", "pretrain-video", "finetune"])
def test_training_step_on_a_second_device_without_host_syncs(stage):
    from benchmarks.count_syncs import count_train_step
    from par_agent.config import PARConfig

    step, log_read = count_train_step(PARConfig.named("tiny"), stage)
    assert sum(step.values()) == 0, step  # par-train's step never waits for the device
    assert log_read == {"value read": 1}  # the all-reduced loss, at log and checkpoint steps only


def test_policy_chunk_on_a_second_device_copies_only_its_actions():
    from benchmarks.count_syncs import count_act
    from par_agent.config import PARConfig

    assert count_act(PARConfig.named("tiny"), n_envs=3) == {"device->host copy": 1}


def test_sample_window_and_inference_loop_on_a_second_device():
    from benchmarks.count_syncs import SimulatedDevice, model_on_device
    from helpers import synthetic_batch
    from par_agent.config import PARConfig

    cfg = PARConfig.named("tiny")
    model = model_on_device(cfg)
    b = {k: v.to("meta") for k, v in synthetic_batch(cfg, B=2).items()}
    with SimulatedDevice() as sim:
        out = model.sample_window(b)
        assert out["frame_tokens"].device.type == "meta"
        ctx = model.new_contexts(2)
        model.start(ctx, [0, 1], b["task_id"], b["frames"][:, 0], b["state"][:, 0])
        for n in range(1, cfg.history + 2):  # past a full context: eviction and refill
            a, _ = model.act(ctx, [0, 1], torch.zeros(2, cfg.frame_tokens, cfg.token_dim, device="meta"),
                             torch.zeros(2, cfg.chunk_size, cfg.action_dim, device="meta"))
            model.commit(ctx, [0, 1], a, b["frames"][:, n % b["frames"].shape[1]], b["state"][:, n % b["frames"].shape[1]])
    assert sum(sim.counts.values()) == 0, sim.counts


def test_noise_is_drawn_on_the_generators_device(monkeypatch):
    """sample_window draws noise where the generator lives, then moves it: a CUDA
    generator with a CUDA model must not be asked for CPU noise ("Expected a 'cpu' device type for
    generator"). No second real generator device exists on a CPU machine, so a stand-in generator
    reports the simulated device and torch.randn checks what it is asked for."""
    from benchmarks.count_syncs import model_on_device
    from helpers import synthetic_batch
    from par_agent.config import PARConfig

    class DeviceGenerator:  # a generator that lives on the simulated device
        device = torch.device("meta")

    asked = []
    real_randn = torch.randn

    def randn(*shape, generator=None, device=None, **kw):
        if generator is not None:
            asked.append(device)
            assert device is not None and torch.device(device) == generator.device, \
                f"noise for a {generator.device} generator asked on {device or 'the default device (cpu)'}"
            return real_randn(*shape, device=device, **kw)
        return real_randn(*shape, device=device, **kw)

    cfg = PARConfig.named("tiny")
    model = model_on_device(cfg)
    b = {k: v.to("meta") for k, v in synthetic_batch(cfg, B=2).items()}
    monkeypatch.setattr(torch, "randn", randn)
    out = model.sample_window(b, generator=DeviceGenerator())
    assert out["actions"].device.type == "meta" and len(asked) == 2
