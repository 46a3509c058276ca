"""Preprocessing from the model config: resize, centre crop, normalise — the same for every target."""

from __future__ import annotations

import math

import numpy as np

from edgevit.data.dataset import RawDataset
from edgevit.models.config import ModelConfig


def preprocess_image(image: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """One uint8 HxWx3 image -> float32 3xHxW normalised as the model expects."""
    from PIL import Image

    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[cfg.interpolation]
    out_h, out_w = cfg.image_size
    scale_h, scale_w = math.floor(out_h / cfg.crop_pct), math.floor(out_w / cfg.crop_pct)
    img = Image.fromarray(image)
    # Resize the shorter side to the pre-crop size (timm's eval transform), then centre crop.
    ratio = max(scale_h / img.height, scale_w / img.width)
    new_w, new_h = max(out_w, round(img.width * ratio)), max(out_h, round(img.height * ratio))
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    img = img.crop((left, top, left + out_w, top + out_h))
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    normed = (pixels - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)


def preprocess(data: RawDataset, cfg: ModelConfig) -> np.ndarray:
    """All images of ``data`` as one float32 N x 3 x H x W array."""
    if not len(data):
        return np.zeros((0, *cfg.input_size), dtype=np.float32)
    return np.stack([preprocess_image(img, cfg) for img in data.images])
