"""The embedded default dataset: scikit-learn's bundled 8x8 digits as 3-channel uint8 images."""

from __future__ import annotations

from functools import partial

import numpy as np

from edgevit.data.dataset import ImageSource, Split, split_indices, take


def _digit_at(pixels: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(pixels[indices[k]][:, :, None], 3, axis=2)


def open_digits(split: Split, count: int | None = None, seed: int = 0) -> ImageSource:
    """Digits images of one split (8x8x3 uint8; the model's transform upsamples them). The whole
    set is 1,797 images of 64 bytes: its pixels stay in memory, each image is made when read."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    idx = take(split_indices(len(pixels), split), count, seed)
    names = [str(int(c)) for c in bunch.target_names]
    return ImageSource(
        bunch.target[idx].astype(np.int64),
        names,
        f"digits/{split}" + (f"[{count}@{seed}]" if count else ""),
        partial(_digit_at, pixels, idx),
    )
