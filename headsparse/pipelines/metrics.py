"""Fidelity of a sparse generation against the dense one: PSNR, SSIM and (when available) LPIPS.

Frames are float arrays in [0, 1], shaped (frames, height, width, 3). SSIM is Wang et al.'s,
computed as scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``: an 11x11 Gaussian window over the image interior,
per channel, averaged. LPIPS needs the ``lpips`` package and its backbone weights on disk; we
never download them, and say so when they are missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

K1, K2, SIGMA, RADIUS = 0.01, 0.03, 1.5, 5


def psnr(frame: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB for data range 1 (``inf`` for identical frames)."""
    mse = float(np.mean((frame.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(frame: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over the channels of one (H, W, C) frame, data range 1."""
    if frame.shape != reference.shape or frame.ndim != 3:
        raise ValueError(f"ssim needs two (H, W, C) frames of one shape; got {frame.shape} and {reference.shape}")
    if min(frame.shape[:2]) < 2 * RADIUS + 1:
        raise ValueError(f"ssim needs frames of at least {2 * RADIUS + 1} pixels per side; got {frame.shape[:2]}")
    x = torch.from_numpy(frame.astype(np.float64)).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(reference.astype(np.float64)).permute(2, 0, 1)[:, None]
    w = _gaussian_window()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = K1**2, K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def lpips_model(device: str = "cpu"):
    """An LPIPS (AlexNet) model if the ``lpips`` package and its weights are on disk; else (None, why)."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        return None, "LPIPS not computed: the lpips package is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return None, f"LPIPS not computed: AlexNet weights are not in {hub} (headsparse never downloads them)"
    return lpips.LPIPS(net="alex", verbose=False).to(device).eval(), ""


def frame_metrics(frames: np.ndarray, reference: np.ndarray) -> tuple[list[dict[str, float]], str]:
    """Per frame {psnr, ssim[, lpips]} of ``frames`` against ``reference``, and a note on LPIPS."""
    if frames.shape != reference.shape:
        raise ValueError(f"the two outputs differ in shape: {frames.shape} vs {reference.shape}")
    model, note = lpips_model()
    rows = []
    for a, b in zip(frames, reference, strict=True):
        row = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
        if model is not None:
            ta, tb = (torch.from_numpy(f).permute(2, 0, 1)[None].float() * 2 - 1 for f in (a, b))
            with torch.no_grad():
                row["lpips"] = float(model(ta, tb))
        rows.append(row)
    return rows, note
