"""Preprocessing from the model config: resize, centre crop, normalise — the same for every target."""

from __future__ import annotations

import math

import numpy as np

from edgevit.data.dataset import ImageSource, RawDataset
from edgevit.errors import DataError
from edgevit.models.config import ModelConfig


def _geometry(size: tuple[int, int], cfg: ModelConfig) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """timm's eval transform for an image of ``size`` (w, h): resize the shorter side to the
    pre-crop size, then centre crop — the new size and the crop box."""
    out_h, out_w = cfg.image_size
    scale_h, scale_w = math.floor(out_h / cfg.crop_pct), math.floor(out_w / cfg.crop_pct)
    width, height = size
    ratio = max(scale_h / height, scale_w / width)
    new_w, new_h = max(out_w, round(width * ratio)), max(out_h, round(height * ratio))
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    return (new_w, new_h), (left, top, left + out_w, top + out_h)


def preprocess_image(image: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """One uint8 HxWx3 image -> float32 3xHxW normalised as the model expects."""
    from PIL import Image

    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[cfg.interpolation]
    img = Image.fromarray(image)
    size, box = _geometry(img.size, cfg)
    img = img.resize(size, resample).crop(box)
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    normed = (pixels - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)


def preprocess_target(target: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """A ground-truth map (H x W mask or depth) brought to the model's input geometry: the same
    resize and crop as its image, nearest-neighbour so classes and depths are never blended."""
    from PIL import Image

    is_mask = target.dtype == np.uint8
    img = Image.fromarray(target if is_mask else target.astype(np.float32), mode="L" if is_mask else "F")
    size, box = _geometry(img.size, cfg)
    if size != img.size:
        img = img.resize(size, Image.Resampling.NEAREST)
    out = np.asarray(img.crop(box))
    return out.astype(np.int64) if is_mask else out.astype(np.float32)


MAX_BOXES = 100  # boxes an image may hold after preprocessing (COCO's images have at most 93)


def preprocess_boxes(boxes: np.ndarray, size: tuple[int, int], cfg: ModelConfig, where: str) -> np.ndarray:
    """An image's boxes (N x 5 in pixels of the image as stored, which is ``size`` = (w, h)) brought
    to the model's input geometry: scaled by its resize, shifted by its crop and clipped to it; a box
    left less than a pixel wide or high is dropped. Padded to MAX_BOXES rows of -1 (class -1: no
    box), so a batch stacks; more raise :class:`DataError` naming ``where``."""
    (new_w, new_h), (left, top, right, bottom) = _geometry(size, cfg)
    width, height = size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]] * (new_w / width) - left, 0, right - left)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]] * (new_h / height) - top, 0, bottom - top)
    b = b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]
    if len(b) > MAX_BOXES:
        raise DataError(f"{where} has {len(b)} boxes, more than {MAX_BOXES}", "split the image into tiles")
    out = np.full((MAX_BOXES, 5), -1.0, dtype=np.float32)
    out[: len(b)] = b
    return out


def preprocess(data: RawDataset, cfg: ModelConfig) -> np.ndarray:
    """All images of ``data`` as one float32 N x 3 x H x W array."""
    if not len(data):
        return np.zeros((0, *cfg.input_size), dtype=np.float32)
    return np.stack([preprocess_image(img, cfg) for img in data.images])


def prepare_target(source: ImageSource, k: int, image: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Image ``k``'s ground truth at the model's input geometry (``image`` is image ``k`` as read):
    its map (:func:`preprocess_target`), or its boxes padded (:func:`preprocess_boxes`)."""
    target = source.read_target(k)
    if source.task == "detection":
        where = f"image {k} of {source.description}"
        return preprocess_boxes(target, (image.shape[1], image.shape[0]), cfg, where)
    return preprocess_target(target, cfg)
