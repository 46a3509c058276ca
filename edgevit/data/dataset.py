"""Raw labelled images (before preprocessing) and the spec that selects them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgevit.errors import DataError

Split = Literal["train", "val", "test", "all"]
# Fractions for sources without their own split folders; the split permutation uses a fixed seed
# so that train/val/test never overlap, whatever seed samples ``count`` images from a split.
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
SPLIT_SEED = 0


class DataSpec(BaseModel):
    """Which images: a source (``digits`` or an ImageFolder directory), a split, how many."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description=(
            "'digits', 'shapes', 'photos', 'shapes-seg', 'shapes-depth' or 'shapes-det' (embedded), a "
            "directory with one sub-directory per class, a dense folder (images/ + masks/ or depth/) or a "
            "COCO folder (images/ + annotations.json)"
        )
    )
    split: Split = "test"
    count: int | None = Field(default=None, gt=0, description="take this many (seeded sample); all if unset")
    seed: int = 0
    sha256: str | None = Field(default=None, description="expected sha256 of the selected images and labels")


@dataclass
class RawDataset:
    """Images as uint8 HxWx3 arrays (sizes may differ), integer labels and class names."""

    images: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    description: str

    def __len__(self) -> int:
        return len(self.images)

    def sha256(self) -> str:
        """Content hash of images and labels, for manifests and cache keys."""
        return content_sha256(self.labels, self.images)


def content_sha256(labels: np.ndarray, images: Iterable[np.ndarray]) -> str:
    """sha256 of labels, then each image's shape and pixels: one image in memory at a time."""
    h = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes())
    for img in images:
        h.update(np.asarray(img.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def split_indices(n: int, split: Split) -> np.ndarray:
    """Indices of ``split`` in a dataset of ``n`` items, from a fixed-seed permutation."""
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train = round(n * SPLIT_FRACTIONS["train"])
    n_val = round(n * SPLIT_FRACTIONS["val"])
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return np.sort(order[lo:hi])


def select(n: int, split: Split, presplit: bool, count: int | None, seed: int, where: str) -> np.ndarray:
    """The indices of ``count`` of a folder's ``n`` files in ``split`` (all of them when the folder
    is the split's own, ``presplit``); raise when none are left."""
    idx = take(np.arange(n) if presplit or split == "all" else split_indices(n, split), count, seed)
    if len(idx) == 0:
        raise DataError(f"{where} has no images in split {split!r}", "add more images")
    return idx


def take(indices: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """A seeded sample of ``count`` indices (all, in order, when count is None or too large)."""
    if count is None or count >= len(indices):
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=count, replace=False))


class ImageSource:
    """The images a :class:`DataSpec` selects, read one at a time.

    A dense source (segmentation, depth) also reads each image's ground-truth map: ``targets(k)``
    gives image ``k``'s H x W mask (uint8 class indices) or depth (float32 metres, 0 = none);
    its ``labels`` are then zeros.
    """

    def __init__(
        self,
        labels: np.ndarray,
        class_names: list[str],
        description: str,
        reader: Callable[[int], np.ndarray],
        targets: Callable[[int], np.ndarray] | None = None,
        task: str = "classification",
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self.description = description
        self._reader = reader
        self._targets = targets
        self.task = task

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, k: int) -> np.ndarray:
        """Image ``k`` of the selection as uint8 H x W x 3."""
        return self._reader(k)

    def read_target(self, k: int) -> np.ndarray:
        """Image ``k``'s ground-truth map (dense sources only)."""
        if self._targets is None:
            raise TypeError(f"{self.description} is a {self.task} source: it has labels, not maps")
        return self._targets(k)

    @property
    def dense(self) -> bool:
        """Whether each image has a ground-truth map instead of a label."""
        return self._targets is not None

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.read(k) for k in range(len(self)))

    def _with_targets(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self.read(k)
            yield self.read_target(k)

    def sha256(self) -> str:
        """Content hash of images and labels (and maps), streamed; the same as ``RawDataset.sha256``
        for a classification source."""
        return content_sha256(self.labels, self._with_targets() if self.dense else self)

    def materialize(self) -> RawDataset:
        """Every image in memory (for the small sets: calibration, tests)."""
        return RawDataset(list(self), self.labels.copy(), list(self.class_names), self.description)
