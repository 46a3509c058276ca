"""The embedded default dataset: scikit-learn's bundled 8x8 digits as 3-channel uint8 images."""

from __future__ import annotations

import numpy as np

from edgevit.data.dataset import RawDataset, Split, split_indices, take


def load_digits_split(split: Split, count: int | None = None, seed: int = 0) -> RawDataset:
    """Digits images of one split (8x8x3 uint8; the model's transform upsamples them)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    idx = take(split_indices(len(pixels), split), count, seed)
    images = [np.repeat(pixels[i][:, :, None], 3, axis=2) for i in idx]
    labels = bunch.target[idx].astype(np.int64)
    names = [str(int(c)) for c in bunch.target_names]
    return RawDataset(images, labels, names, f"digits/{split}" + (f"[{count}@{seed}]" if count else ""))
