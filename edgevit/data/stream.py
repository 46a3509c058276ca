"""Preprocessed images for training and evaluation, batch by batch, in bounded memory.

:class:`Images` serves a source preprocessed for a model in batches of chosen indices. A set
whose preprocessed tensors fit in the cache limit (``EDGEVIT_DATA_CACHE_MB``, default 256 MiB:
the embedded sources at their own size) is preprocessed once and held, as before; a larger one
streams through a torch ``DataLoader`` whose worker processes read, decode and preprocess each
batch as it is needed, so memory stays the same whatever the dataset's size. Both paths give the
same tensors (the same ``preprocess_image``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgevit.data.dataset import ImageSource
from edgevit.data.transforms import MAX_BOXES, prepare_target, preprocess, preprocess_image
from edgevit.errors import DataError, EdgeVitError
from edgevit.models.config import ModelConfig

CACHE_ENV = "EDGEVIT_DATA_CACHE_MB"
WORKERS_ENV = "EDGEVIT_DATA_WORKERS"
DEFAULT_CACHE_MB = 256


@dataclass(frozen=True)
class _Failure:
    """A data error raised in a loader worker, carried to the main process as a value (a worker's
    exception reaches it as a traceback text, not as the one-line error the CLI prints)."""

    message: str
    fix: str | None


class _Preprocessed(Dataset[Any]):
    """Image ``k`` of a source, preprocessed for a model, with its label (or its map)."""

    def __init__(self, source: ImageSource, config: ModelConfig) -> None:
        self.source = source
        self.config = config

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> tuple[np.ndarray, Any] | _Failure:
        try:
            image = self.source.read(k)
            pixels = preprocess_image(image, self.config)
            if self.source.dense:
                return pixels, prepare_target(self.source, k, image, self.config)
            return pixels, int(self.source.labels[k])
        except DataError as exc:
            return _Failure(exc.message, exc.fix)


def _collate(items: list[tuple[np.ndarray, Any] | _Failure]) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
    for item in items:
        if isinstance(item, _Failure):
            return item
    pixels = np.stack([item[0] for item in items])  # type: ignore[index]
    first = items[0][1]  # type: ignore[index]
    if isinstance(first, np.ndarray):  # dense maps
        return torch.from_numpy(pixels), torch.from_numpy(np.stack([item[1] for item in items]))  # type: ignore[index]
    labels = np.asarray([item[1] for item in items], dtype=np.int64)  # type: ignore[index]
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def cache_limit_bytes() -> int:
    """The largest preprocessed set held in memory (``EDGEVIT_DATA_CACHE_MB``)."""
    raw = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise EdgeVitError(
            f"{CACHE_ENV}={raw!r} is not a number", f"set {CACHE_ENV} to megabytes, e.g. 256"
        ) from None
    return int(mb * 2**20)


def default_workers() -> int:
    """Loader worker processes per training process (``EDGEVIT_DATA_WORKERS``; by default one
    per spare core, at most 4, and at least 1)."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is not None:
        try:
            return max(0, int(raw))
        except ValueError:
            raise EdgeVitError(
                f"{WORKERS_ENV}={raw!r} is not a count", f"set {WORKERS_ENV} to 0 or more"
            ) from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(4, cores // max(1, world) - 1))


class Images:
    """A source preprocessed for a model, served in batches (see the module)."""

    def __init__(
        self,
        source: ImageSource,
        config: ModelConfig,
        workers: int | None = None,
        pin_memory: bool = False,
        cache_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.labels = torch.from_numpy(source.labels).long()
        limit = cache_limit_bytes() if cache_bytes is None else cache_bytes
        # a dense source's maps take another H x W values (8 bytes each) per image, boxes MAX_BOXES x 5 floats
        per_image = int(np.prod(config.input_size)) * 4 + (
            (MAX_BOXES * 5 * 4 if source.task == "detection" else 8 * int(np.prod(config.image_size)))
            if source.dense
            else 0
        )
        self.nbytes = len(source) * per_image
        self.in_memory = self.nbytes <= limit
        self.workers = 0 if self.in_memory else (default_workers() if workers is None else workers)
        self.pin_memory = pin_memory
        self._x: torch.Tensor | None = None
        if self.in_memory:
            raw = source.materialize()
            self._x = torch.from_numpy(preprocess(raw, config))
            if source.dense:
                maps = [prepare_target(source, k, raw.images[k], config) for k in range(len(source))]
                self.labels = torch.from_numpy(np.stack(maps)) if maps else self.labels

    def __len__(self) -> int:
        return len(self.source)

    @property
    def description(self) -> str:
        """The source's description."""
        return self.source.description

    @property
    def mode(self) -> str:
        """How the images are served, for logs: in memory, or streamed by N workers."""
        return "in-memory" if self.in_memory else f"streamed, {self.workers} loader worker(s)"

    def batches(self, order: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Images and labels (maps, for a dense source) of each list of indices in ``order``, in that order."""
        if self._x is not None:
            for idx in order:
                t = torch.as_tensor(list(idx), dtype=torch.long)
                yield self._x[t], self.labels[t]
            return
        loader = DataLoader(
            _Preprocessed(self.source, self.config),
            batch_sampler=[list(idx) for idx in order],
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),  # workers' seeds; the global RNG stays untouched
        )
        for batch in loader:
            if isinstance(batch, _Failure):
                raise DataError(batch.message, batch.fix)
            yield batch

    def in_order(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image and label, ``batch`` at a time, in the source's order."""
        n = len(self)
        return self.batches([range(i, min(i + batch, n)) for i in range(0, n, batch)])


class Batched(Protocol):
    """Labelled images served in order, a batch at a time (:class:`Images`, :class:`Tensors`)."""

    def __len__(self) -> int: ...

    def in_order(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class Tensors:
    """Preprocessed images and labels already in memory, served like :class:`Images`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def in_order(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image and label, ``batch`` at a time."""
        for i in range(0, len(self.x), batch):
            yield self.x[i : i + batch], self.y[i : i + batch]
