"""Frame tokenizer (diffusers AutoencoderKL) and normalisers."""
import numpy as np
import pytest
import torch

from helpers import write_fake_h5
from par_agent.config import PARConfig
from par_agent.models import Normalizer, PhysicalAutoregressiveModel
from par_agent.tokenizers import FrameTokenizer, background_frame, reconstruction_psnr
from par_agent.train import main as train_main


def train_tokenizer(frames: np.ndarray, out, steps: int, *overrides: str, fg_weight: float = 0.0,
                    lr: float = 2e-3) -> FrameTokenizer:
    """``par-train tokenizer`` (the one tokenizer trainer) on frames (N, 32, 32, 3), 8 episodes of N/8; the
    tiny preset with ``overrides``, 2 windows of 8 frames a step; returns the final (EMA) tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    data = write_fake_h5(out / "frames.h5", frames=np.split(frames, 8))
    train_main(["tokenizer", "--data", str(data), "--out", str(out), "--preset", "tiny", "--set", "chunk_size=1",
                "history=8", *overrides, "--steps", str(steps), "--batch-size", "2", "--lr", str(lr),
                "--fg-weight", str(fg_weight), "--val-fraction", "0", "--ckpt-every", str(steps),
                "--val-every", str(steps), "--threads", "2", "--no-progress"])
    return PhysicalAutoregressiveModel.from_pretrained(out / "tokenizer" / "final").frame_tokenizer.eval()


def test_shapes_and_patchify_round_trip():
    cfg = PARConfig.named("tiny")
    tok = FrameTokenizer(cfg).eval()
    frames = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8)
    tokens = tok.encode(frames)
    assert tokens.shape == (2, 3, cfg.frame_tokens, cfg.token_dim)
    z = torch.randn(5, cfg.num_cameras, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    torch.testing.assert_close(tok.tokens_to_latents(tok.latents_to_tokens(z)), z)
    img = tok.decode(tokens)
    assert img.shape == frames.shape and img.dtype == torch.uint8


def test_bad_frames_named():
    tok = FrameTokenizer(PARConfig.named("tiny"))
    with pytest.raises(ValueError, match=r"\(\.\.\., 32, 32, 3\)"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(torch.zeros(1, 32, 32, 3))


def test_training_improves_reconstruction_and_sets_unit_latents(tmp_path):
    torch.manual_seed(0)  # par-train's tiny preset from scratch with seed 0: the weights before training
    before_tok = FrameTokenizer(PARConfig.named("tiny"))
    # smooth synthetic scenes: a coloured square on a gradient
    rng = np.random.default_rng(0)
    frames = np.zeros((64, 32, 32, 3), np.uint8)
    for i in range(64):
        frames[i] = np.linspace(40, 200, 32, dtype=np.uint8)[None, :, None]
        x, y = rng.integers(0, 24, 2)
        frames[i, y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
    before = reconstruction_psnr(before_tok, frames)
    tok = train_tokenizer(frames, tmp_path, 150)
    after = reconstruction_psnr(tok, frames)
    assert after > before + 8 and after > 20, (before, after)
    tokens = tok.encode(torch.as_tensor(frames))
    assert 0.7 < tokens.std().item() < 1.3


def small_object_scenes(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed grained table (32x32) with one 2x2 saturated cube at a random place per frame,
    as the cubes look at 64 px: frames (n, 32, 32, 3) uint8, cube mask (n, 32, 32) bool, table."""
    rng = np.random.default_rng(seed)
    table = (np.linspace(90, 170, 32)[None, :, None] + rng.integers(-10, 11, (32, 32, 3))).astype(np.uint8)
    frames, mask = np.repeat(table[None], n, 0), np.zeros((n, 32, 32), bool)
    for i in range(n):
        x, y = rng.integers(0, 30, 2)
        frames[i, y:y + 2, x:x + 2] = (220, 20, 20)
        mask[i, y:y + 2, x:x + 2] = True
    return frames, mask, table


def test_background_frame_is_the_static_scene():
    frames, mask, table = small_object_scenes()
    bg = background_frame(frames)
    assert bg.dtype == torch.uint8
    torch.testing.assert_close(bg, torch.from_numpy(table))  # the cubes fall out of the median
    # several datasets' frames: the same frames picked as from their concatenation
    for max_frames in (40, 2048):
        torch.testing.assert_close(background_frame([frames[:30], frames[30:]], max_frames),
                                   background_frame(frames, max_frames))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        background_frame(np.zeros((32, 32, 3), np.uint8))


def test_foreground_weight_keeps_small_objects(tmp_path):
    """The same training budget with and without foreground weighting (a stride-4 autoencoder,
    as the cpu64 protocol uses): unweighted, the 2x2 cubes blur into the table (mean error
    about 100 of 255 on their pixels); weighted, they are reconstructed (about 15-25)."""
    frames, mask, _ = small_object_scenes()
    cube_err = {}
    for fg in (0.0, 20.0):
        tok = train_tokenizer(frames, tmp_path / str(fg), 200, "vae_stride=4", "vae_channels=[8,16,16]", fg_weight=fg)
        rec = tok.decode(tok.encode(torch.as_tensor(frames))).numpy().astype(float)
        cube_err[fg] = np.abs(rec - frames)[mask].mean()
    assert cube_err[20.0] < 0.5 * cube_err[0.0], cube_err
    # no foreground at all: the weighted loss is the plain one (the weights average to 1)
    tok = FrameTokenizer(PARConfig.named("tiny"))
    still = torch.from_numpy(frames[:1]).repeat(4, 1, 1, 1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        plain = tok.loss(still)["loss"]
    torch.manual_seed(1)
    weighted = tok.loss(still, background=still[0], fg_weight=20.0)["loss"]
    torch.testing.assert_close(weighted, plain)


def test_loads_any_local_autoencoder_folder(tmp_path):
    cfg = PARConfig.named("tiny")
    FrameTokenizer(cfg).vae.save_pretrained(tmp_path / "vae")
    tok = FrameTokenizer.from_autoencoder(cfg, tmp_path / "vae")
    assert tok.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 4, 16)
    with pytest.raises(ValueError, match="latent_channels"):
        FrameTokenizer.from_autoencoder(cfg.replace(latent_channels=8), tmp_path / "vae")
    with pytest.raises(FileNotFoundError):
        FrameTokenizer.from_autoencoder(cfg, tmp_path / "none")


def test_normalizer_round_trip_and_ranges():
    n = Normalizer(3, "minmax")
    n.set_stats(np.array([-2.0, 0.0, 1.0]), np.array([2.0, 1.0, 1.0]))
    x = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, 1.0]])
    y = n.normalize(x)
    torch.testing.assert_close(y[:, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(n.unnormalize(y), x)
    with pytest.raises(ValueError, match="expects 3"):
        n.set_stats(np.zeros(2), np.ones(2))
    s = Normalizer(2, "meanstd")
    s.set_stats(np.array([1.0, 2.0]), np.array([2.0, 0.0]))
    assert torch.isfinite(s.normalize(torch.zeros(2))).all()
