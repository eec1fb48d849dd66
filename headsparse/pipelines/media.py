"""Writing generations to disk: mp4 (imageio-ffmpeg), GIF when ffmpeg is unavailable, PNG for images.

Frames are float arrays in [0, 1], (frames, height, width, 3). The side-by-side view puts the dense
and the headsparse result next to each other with a caption strip, so a user can see both at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad height and width to even sizes (yuv420p needs them)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def write_video(frames: np.ndarray, path: Path, fps: int) -> Path:
    """``path`` as mp4 (H.264 through imageio-ffmpeg); a GIF beside it if that fails. Returns the written path."""
    data = _even(to_uint8(frames))
    try:
        import imageio.v2 as imageio

        with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error") as writer:
            for frame in data:
                writer.append_data(frame)
        return path
    except Exception as exc:  # no imageio-ffmpeg / no encoder: fall back to a GIF, say why
        gif = path.with_suffix(".gif")
        logger.warning("could not write %s (%s); writing %s instead", path.name, exc, gif.name)
        path.unlink(missing_ok=True)
        return write_gif(frames, gif, fps)


def write_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in to_uint8(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / max(fps, 1))), loop=0)
    return path


def write_image(frame: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(to_uint8(frame[None])[0]).save(path)
    return path


def write_output(frames: np.ndarray, stem: Path, fps: int, video: bool) -> Path:
    """A video (mp4, or GIF fallback) or, for image models, a PNG of the single frame."""
    if video:
        return write_video(frames, stem.with_suffix(".mp4"), fps)
    return write_image(frames[0], stem.with_suffix(".png"))


def side_by_side(left: np.ndarray, right: np.ndarray, captions: tuple[str, str]) -> np.ndarray:
    """(frames, caption + height, 2 * width + gap, 3): ``left`` and ``right`` with a caption above each."""
    import cv2

    if left.shape != right.shape:
        raise ValueError(f"side_by_side needs equal shapes, got {left.shape} and {right.shape}")
    n, h, w, _ = left.shape
    gap, strip = 8, max(24, h // 12)
    out = np.ones((n, strip + h, 2 * w + gap, 3), dtype=np.float32)
    out[:, strip:, :w] = left
    out[:, strip:, w + gap :] = right
    canvas = to_uint8(out)
    scale = strip / 40
    for i in range(n):
        for x0, text in ((0, captions[0]), (w + gap, captions[1])):
            cv2.putText(canvas[i], text, (x0 + 4, int(strip * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                        max(1, round(scale * 2)), cv2.LINE_AA)
    return canvas.astype(np.float32) / 255
