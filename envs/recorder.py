"""Predicted-video recorder: the real camera frame beside the frame the model expected.

Each episode becomes one MP4: left panel the real frame, right panel the model's predicted frame for
the same time step (grey when there is none), a caption line with step and success, upscaled so the
128 px frames are easy to see.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREY = 96
CAPTION_H = 24


def _to_uint8_image(img) -> np.ndarray:
    if hasattr(img, "detach"):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an image (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return img


def _panel(img: Optional[np.ndarray], size: int) -> np.ndarray:
    if img is None:
        return np.full((size, size, 3), GREY, np.uint8)
    img = _to_uint8_image(img)
    h, w = img.shape[:2]
    width = max(1, round(size * w / h))  # keep stitched multi-camera frames wide
    return np.asarray(Image.fromarray(img).resize((width, size), Image.NEAREST))


def compose_frame(real, predicted=None, step: Optional[int] = None, success: Optional[bool] = None,
                  panel_size: int = 256, text: str = "") -> np.ndarray:
    """One video frame: ``[real | predicted]`` over a caption strip.

    Args:
        real: ``(H, W, 3)`` uint8 camera frame.
        predicted: ``(H, W, 3)`` uint8 (or float in [0, 1]) predicted frame, or ``None`` (grey panel).
        step: control step shown in the caption.
        success: success flag shown in the caption.
        panel_size: height in pixels of each panel.
    Returns:
        ``(panel_size + 24, W_total, 3)`` uint8, with even sides for H.264.
    """
    left = _panel(real, panel_size)
    right = _panel(predicted, panel_size) if predicted is not None else np.full_like(left, GREY)
    body = np.concatenate([left, np.full((panel_size, 4, 3), 255, np.uint8), right], axis=1)
    caption = Image.new("RGB", (body.shape[1], CAPTION_H), (0, 0, 0))
    draw = ImageDraw.Draw(caption)
    font = ImageFont.load_default()
    parts = ["real | predicted" if predicted is not None else "real | (no prediction)"]
    if step is not None:
        parts.append(f"step {step}")
    if success is not None:
        parts.append("success" if success else "no success yet")
    if text:
        parts.append(text)
    draw.text((4, 5), "  ".join(parts), fill=(0, 255, 0) if success else (255, 255, 255), font=font)
    frame = np.concatenate([body, np.asarray(caption)], axis=0)
    h, w = frame.shape[:2]
    return np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])


class VideoRecorder:
    """Writes one MP4 per episode of ``[real | predicted]`` frames.

    Args:
        folder: output folder (created).
        fps: frames per second; use the control rate (20 Hz for the Panda tasks).
        panel_size: height of each panel in pixels.
        prefix: file name prefix; files are ``{prefix}_{episode:04d}[_success|_fail].mp4``.

    Example::

        rec = VideoRecorder("outputs/videos")
        rec.add(obs["rgb"], predicted_rgb, step=t, success=info["success"])
        path = rec.close_episode(success=True)
    """

    def __init__(self, folder, fps: int = 20, panel_size: int = 256, prefix: str = "episode"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.panel_size = panel_size
        self.prefix = prefix
        self.frames: list[np.ndarray] = []
        self.episode = 0
        self.paths: list[Path] = []

    def add(self, real_rgb, predicted_rgb=None, step: Optional[int] = None, success: Optional[bool] = None,
            text: str = "") -> None:
        """Append one time step (real frame ``(H, W, 3)``, predicted frame or ``None``)."""
        if step is None:
            step = len(self.frames)
        self.frames.append(compose_frame(real_rgb, predicted_rgb, step, success, self.panel_size, text))

    def close_episode(self, success: Optional[bool] = None) -> Optional[Path]:
        """Write the buffered frames to an MP4 and start a new episode. Returns the path (None if empty)."""
        if not self.frames:
            return None
        tag = "" if success is None else ("_success" if success else "_fail")
        path = self.folder / f"{self.prefix}_{self.episode:04d}{tag}.mp4"
        imageio.mimwrite(path, self.frames, fps=self.fps, codec="libx264", quality=8, macro_block_size=1)
        self.frames = []
        self.episode += 1
        self.paths.append(path)
        return path

    def close(self) -> None:
        self.close_episode()


class PredictedVideoWrapper(gym.Wrapper):
    """Records every episode of a single (unbatched, numpy) PAR env with :class:`VideoRecorder`.

    The policy hands its predicted frame for the coming observation with :meth:`set_prediction`
    before ``step``; it is shown beside the real frame that ``step`` returns. Episodes are written on
    ``reset`` and ``close``.

    Args:
        env: an env from :func:`envs.make_env` (``num_envs=1``).
        folder, fps, panel_size: see :class:`VideoRecorder`; ``fps=None`` uses the env's control rate.
    """

    def __init__(self, env: gym.Env, folder, fps: Optional[int] = None, panel_size: int = 256):
        super().__init__(env)
        if fps is None:
            fps = int(getattr(env.unwrapped, "control_freq", 20))
        self.recorder = VideoRecorder(folder, fps=fps, panel_size=panel_size)
        self._prediction = None
        self._step = 0
        self._success = False

    def set_prediction(self, predicted_rgb) -> None:
        """The model's predicted frame ``(H, W, 3)`` for the observation the next ``step`` returns."""
        self._prediction = predicted_rgb

    def reset(self, **kwargs):
        self.recorder.close_episode(self._success if self.recorder.frames else None)
        obs, info = self.env.reset(**kwargs)
        self._step, self._success, self._prediction = 0, False, None
        self.recorder.add(obs["rgb"], None, step=0, success=False)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        self._success = self._success or bool(info.get("success", False))
        self.recorder.add(obs["rgb"], self._prediction, step=self._step, success=self._success)
        self._prediction = None
        return obs, reward, terminated, truncated, info

    def close(self):
        self.recorder.close_episode(self._success if self.recorder.frames else None)
        return super().close()
