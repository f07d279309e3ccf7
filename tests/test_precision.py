"""par_agent.precision: which number format the matrix products run in, and a bf16 step that trains."""
import pytest
import torch

from par_agent import precision as P


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert P.resolve_precision("auto", cuda) == "bf16" and P.resolve_precision("auto", cpu) == "fp32"
    assert P.resolve_precision("fp32", cuda) == "fp32" and P.resolve_precision("bf16", cpu) == "bf16"
    assert isinstance(P.native_bf16_cpu(), bool)
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("fp16", cpu)


def test_a_bf16_step_runs_in_bf16_and_keeps_float32_weights():
    from benchmarks.bench_train import make_batch
    from helpers import tiny_model

    m = tiny_model().train()
    seen = []
    hook = m.backbone.blocks[0].mlp[0].register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    with P.autocast_for(torch.device("cpu"), "bf16"):
        out = m(make_batch(m.cfg, "finetune", 2, torch.device("cpu")))
    out["loss"].backward()
    hook.remove()
    assert seen == [torch.bfloat16] and torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert m.backbone.blocks[0].mlp[0].weight.grad.dtype == torch.float32
