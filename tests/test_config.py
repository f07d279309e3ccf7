import pytest

from par_agent.config import PARConfig


def test_json_round_trip(tmp_path):
    cfg = PARConfig.named("tiny", task_names=("PushCube-v1", "PickCube-v1"))
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert PARConfig.from_json(path) == cfg
    assert PARConfig.from_json(cfg.to_json()) == cfg


def test_presets_and_derived_sizes():
    small = PARConfig.named("small")
    assert small == PARConfig()
    assert small.frame_tokens == 64 and small.token_dim == 16
    tiny = PARConfig.named("tiny")
    assert tiny.frame_tokens == 4


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(image_size=100), "image_size"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(history=1), "history"),
        (dict(width=250, num_heads=4), "width"),
        (dict(vae_stride=4), "vae_stride"),
        (dict(prediction_type="x"), "prediction_type"),
        (dict(sampler="euler"), "sampler"),
        (dict(task_names=()), "task_names"),
        (dict(num_inference_steps=-1), "num_inference_steps"),
        (dict(evict_blocks=8), "evict_blocks"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        PARConfig(**changes)


def test_unknown_fields_and_presets_rejected(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        PARConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="huge"):
        PARConfig.named("huge")
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PARConfig.from_json(p)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'Foo'"):
        PARConfig().task_id("Foo")
