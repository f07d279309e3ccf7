"""Every rule of the causal-with-inverse-kinematics mask, and causality of the backbone."""
import pytest
import torch

from par_agent.config import PARConfig
from par_agent.models import BlockSpec, Kind, PhysicalAutoregressiveModel, window_layout, window_mask

SPEC = BlockSpec(frame_tokens=3, chunk_size=2, has_actions=True, has_state=True)
T = 3
BLOCK, KIND = window_layout(SPEC, T)
MASK = window_mask(SPEC, T)
POS = torch.arange(len(BLOCK))


def where(block=None, kind=None):
    sel = torch.ones(len(BLOCK), dtype=torch.bool)
    if block is not None:
        sel &= BLOCK == block
    if kind is not None:
        sel &= KIND == kind
    return POS[sel].tolist()


def sees(q, k):
    return bool(MASK[q, k])


def test_layout_order():
    # [TASK] [F F F S] [F F F BOA A A S] [F F F BOA A A S]
    assert KIND.tolist() == [0, 1, 1, 1, 4, 1, 1, 1, 2, 3, 3, 4, 1, 1, 1, 2, 3, 3, 4]
    assert BLOCK.tolist() == [-1] + [0] * 4 + [1] * 7 + [2] * 7


def test_rule1_prefix_visible_to_all_and_prefix_sees_only_prefix():
    assert MASK[:, 0].all()
    assert MASK[0].tolist() == [True] + [False] * (len(BLOCK) - 1)


def test_rule2_block_causal():
    for q in range(1, len(BLOCK)):
        for k in range(1, len(BLOCK)):
            if BLOCK[k] < BLOCK[q]:
                assert sees(q, k), (q, k)
            if BLOCK[k] > BLOCK[q]:
                assert not sees(q, k), (q, k)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_rule3_frames_bidirectional_and_blind_to_rest_of_block(n):
    for q in where(n, Kind.FRAME):
        for k in where(n):
            assert sees(q, k) == (KIND[k] == Kind.FRAME), (q, k)


@pytest.mark.parametrize("n", [1, 2])
def test_rule4_boa_sees_frames_and_itself(n):
    (boa,) = where(n, Kind.BOA)
    for k in where(n):
        assert sees(boa, k) == (KIND[k] in (Kind.FRAME, Kind.BOA)), k


@pytest.mark.parametrize("n", [1, 2])
def test_rule5_actions_see_frames_boa_and_earlier_actions(n):
    acts = where(n, Kind.ACTION)
    for q in acts:
        for k in where(n):
            expect = KIND[k] in (Kind.FRAME, Kind.BOA) or (KIND[k] == Kind.ACTION and k <= q)
            assert sees(q, k) == expect, (q, k)
    assert not sees(acts[0], acts[1]) and sees(acts[1], acts[0])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_rule6_state_sees_whole_block(n):
    (s,) = where(n, Kind.STATE)
    assert all(sees(s, k) for k in where(n))


def test_no_state_is_seen_by_the_same_blocks_frames_boa_or_actions():
    """The leak the layout is built to avoid: s_n must not reach the tokens A_{n-1} is read from."""
    for n in (1, 2):
        (s,) = where(n, Kind.STATE)
        for q in where(n):
            if KIND[q] != Kind.STATE:
                assert not sees(q, s)


def test_frames_only_layout():
    spec = BlockSpec(3, 2, has_actions=False, has_state=False)
    block, kind = window_layout(spec, 2)
    assert kind.tolist() == [0, 1, 1, 1, 1, 1, 1]
    m = window_mask(spec, 2)
    assert m[1:4, 4:].any() == False  # noqa: E712  (frames of block 0 never see block 1)
    assert m[4:, 1:].all()


def _model():
    torch.manual_seed(0)
    m = PhysicalAutoregressiveModel(PARConfig.named("tiny")).eval()
    return m


def test_changing_a_later_block_never_changes_earlier_outputs():
    m = _model()
    cfg = m.cfg
    spec = BlockSpec(cfg.frame_tokens, cfg.chunk_size, True, True)
    block, kind = window_layout(spec, 4)
    x = torch.randn(2, len(block), cfg.width)
    pos = torch.arange(len(block))
    mask = window_mask(spec, 4)
    h = m.backbone(x, pos, mask)
    for j in range(4):
        x2 = x.clone()
        x2[:, block == j] += torch.randn_like(x2[:, block == j])
        h2 = m.backbone(x2, pos, mask)
        before = block < j
        torch.testing.assert_close(h2[:, before], h[:, before])
        assert not torch.allclose(h2[:, block == j], h[:, block == j])


def test_state_and_actions_do_not_leak_into_frame_and_boa_outputs():
    m = _model()
    cfg = m.cfg
    spec = BlockSpec(cfg.frame_tokens, cfg.chunk_size, True, True)
    block, kind = window_layout(spec, 3)
    x = torch.randn(1, len(block), cfg.width)
    pos = torch.arange(len(block))
    mask = window_mask(spec, 3)
    h = m.backbone(x, pos, mask)
    x2 = x.clone()
    later = (block == 2) & ((kind == Kind.STATE) | (kind == Kind.ACTION))
    x2[:, later] += 1.0
    h2 = m.backbone(x2, pos, mask)
    read = (block == 2) & ((kind == Kind.FRAME) | (kind == Kind.BOA))
    torch.testing.assert_close(h2[:, read], h[:, read])


def test_plain_causal_mask_differs_from_ik_only_inside_a_blocks_frames():
    """The ablation's mask: token-causal. In this layout it keeps every IK rule but the frames'
    bidirectional attention: a frame token then sees only the block's earlier frame tokens."""
    causal = window_mask(SPEC, T, name="causal")
    assert torch.equal(causal, torch.tril(torch.ones_like(causal)))  # plain causal (the prefix is position 0)
    differ = (causal != MASK).nonzero().tolist()
    assert differ and all(KIND[q] == KIND[k] == Kind.FRAME and BLOCK[q] == BLOCK[k] and k > q for q, k in differ)
    with pytest.raises(ValueError, match="attention_mask must be one of"):
        PARConfig.named("tiny", attention_mask="full")
