"""save/load round trip and clear errors for bad checkpoint folders."""
import json

import pytest
import torch

from helpers import test_device, tiny_model
from par_agent.hub import CheckpointError, resolve
from par_agent.models import PhysicalAutoregressiveModel


def test_round_trip_is_bit_exact(tmp_path):
    m = tiny_model()
    m.action_norm.set_stats(torch.arange(8.0) - 5, torch.arange(8.0) + 1)
    m.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    m2 = PhysicalAutoregressiveModel.from_pretrained(tmp_path / "ck", device=test_device())
    assert m2.cfg == m.cfg and not m2.training
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


def test_overrides_apply_after_loading(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    m = PhysicalAutoregressiveModel.from_pretrained(tmp_path, use_kv_cache=False, num_inference_steps=2)
    assert m.use_kv_cache is False and m.num_inference_steps == 2


def test_inference_settings_have_one_validated_source():
    """use_kv_cache / num_inference_steps are the config's: set_runtime changes them (validated, runtime
    fields only); assigning the model attribute is refused instead of silently diverging."""
    import pytest

    m = tiny_model()
    m.set_runtime(num_inference_steps=2, use_kv_cache=False, sampler="dpmsolver")
    assert (m.cfg.num_inference_steps, m.num_inference_steps, m.use_kv_cache) == (2, 2, False)
    assert type(m.diffusion.sample_sched).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="num_inference_steps"):
        m.set_runtime(num_inference_steps=10**6)
    with pytest.raises(TypeError, match="width"):
        m.set_runtime(width=8)
    with pytest.raises(AttributeError):
        m.use_kv_cache = True
    assert m.cfg.num_inference_steps == 2  # a refused change leaves the settings as they were


def test_half_precision_save_loads_back_to_float32(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path, dtype=torch.float16)
    m2 = PhysicalAutoregressiveModel.from_pretrained(tmp_path, device=test_device())
    w1, w2 = m.backbone.blocks[0].mlp[0].weight, m2.backbone.blocks[0].mlp[0].weight
    assert w2.dtype == torch.float32 and torch.allclose(w1, w2, atol=1e-3)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file_is_named(tmp_path, missing):
    tiny_model().save_pretrained(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        PhysicalAutoregressiveModel.from_pretrained(tmp_path)


def test_corrupt_weights_named(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt weights file .*model.safetensors"):
        PhysicalAutoregressiveModel.from_pretrained(tmp_path)


def test_bad_config_named(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["chunk_size"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*chunk_size"):
        PhysicalAutoregressiveModel.from_pretrained(tmp_path)


def test_weights_of_another_size_named(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        PhysicalAutoregressiveModel.from_pretrained(tmp_path)


def test_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown built-in checkpoint 'par-nothing'"):
        resolve("par-nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nope"))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="someone/par-model"):
        resolve("someone/par-model")


def test_configs_of_earlier_versions_load_unless_they_use_a_removed_experiment():
    """par-stackcube's config.json records best_of=1, value_head_width=0, ... (par-agent 0.1): read past.
    A checkpoint that used one of those experiments is refused by name, not loaded without it."""
    from par_agent.config import PARConfig
    from par_agent.hub import config_from_saved

    d = PARConfig.named("tiny").to_dict()
    old = {**d, "best_of": 1, "value_head_width": 0, "perception_targets": [], "perception_dim": 0}
    assert config_from_saved(old) == PARConfig.named("tiny")
    with pytest.raises(ValueError, match=r"uses \['best_of'\].*par-agent 0.1"):
        config_from_saved({**old, "best_of": 4})
    with pytest.raises(ValueError, match="unknown PARConfig fields"):
        config_from_saved({**d, "no_such_field": 1})


def test_a_video_model_loads_as_a_model_but_is_refused_as_a_policy(tmp_path):
    """par-train's pretrain-video result (what --init takes) has no trained action head: PARPolicy
    refuses it by name and says what to do, the model itself loads."""
    from par_agent import PARPolicy
    from par_agent.hub import checkpoint_extra

    tiny_model().save_pretrained(tmp_path / "video", extra={"stage": "pretrain-video", "step": 800})
    assert checkpoint_extra(tmp_path / "video") == {"stage": "pretrain-video", "step": 800}
    PhysicalAutoregressiveModel.from_pretrained(tmp_path / "video")
    with pytest.raises(ValueError, match=r"pretrain-video checkpoint.*par-train finetune --init"):
        PARPolicy.from_pretrained(str(tmp_path / "video"))
    tiny_model().save_pretrained(tmp_path / "policy", extra={"stage": "finetune", "step": 10})
    PARPolicy.from_pretrained(str(tmp_path / "policy"))
