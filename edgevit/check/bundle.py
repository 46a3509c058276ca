"""Evaluation bundles written batch by batch: the images a build checks every artifact on, with
their labels and the float reference's logits.

The file is the ``np.savez`` layout (``inputs``, ``labels``, ``reference_logits``, stored
uncompressed), so ``np.load`` reads it as before, while ``edgevit.agent.open_bundle`` reads its
inputs a slice at a time (``open_dense`` also a dense task's maps and reference outputs): neither
writing nor reading holds the set in memory.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgevit.agent import BundleInputs, open_bundle

__all__ = ["BundleInputs", "Inputs", "open_bundle", "open_dense", "write_bundle"]

Inputs = np.ndarray | BundleInputs  # evaluation images: an array, or a bundle's read by slices


def write_bundle(
    path: Path,
    count: int,
    item_shape: Sequence[int],
    batches: Iterable[tuple[np.ndarray, ...]],
    labels: np.ndarray | None = None,
) -> None:
    """Write ``count`` inputs of ``item_shape`` from ``batches`` of (inputs, reference outputs), then
    ``labels`` and the reference outputs, into the .npz at ``path``.

    Batches of (inputs, reference outputs, ground truth) — a dense task's maps, with ``labels``
    None — write the ground truth as the labels. Reference outputs and maps are spooled to disk
    beside the bundle as they come, so a dense set's outputs are never held whole."""
    spools = {name: _Spool(path.with_name(f".{path.name}.{name}")) for name in ("reference_logits", "labels")}
    written = 0
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("inputs.npy", "w", force_zip64=True) as fh:
                _header(fh, np.float32, (count, *item_shape))
                for batch in batches:
                    x = batch[0]
                    fh.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                    written += len(x)
                    spools["reference_logits"].add(np.asarray(batch[1], dtype=np.float32))
                    if len(batch) > 2:
                        spools["labels"].add(np.asarray(batch[2]))
            if written != count:
                raise ValueError(f"bundle {path}: {written} inputs written, {count} announced")
            if labels is not None:
                with zf.open("labels.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(labels))
            else:
                spools["labels"].copy_into(zf, "labels.npy")
            spools["reference_logits"].copy_into(zf, "reference_logits.npy")
    finally:
        for spool in spools.values():
            spool.remove()


def _header(fh: IO[bytes], dtype: Any, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fh, header)


class _Spool:
    """Batches of one array written to a scratch file as they come, then copied into a bundle."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.dtype: np.dtype[Any] | None = None
        self.shape: tuple[int, ...] = ()
        self._fh: IO[bytes] | None = None

    def add(self, batch: np.ndarray) -> None:
        if self._fh is None:
            self._fh = open(self.path, "wb")  # noqa: SIM115  (closed by copy_into/remove)
            self.dtype, self.shape = batch.dtype, tuple(batch.shape[1:])
        self._fh.write(np.ascontiguousarray(batch, dtype=self.dtype).tobytes())
        self.rows += len(batch)

    def copy_into(self, zf: zipfile.ZipFile, member: str) -> None:
        if self._fh is None:
            raise ValueError(f"bundle member {member}: nothing was written")
        self._fh.close()
        with zf.open(member, "w", force_zip64=True) as fh, open(self.path, "rb") as src:
            _header(fh, self.dtype, (self.rows, *self.shape))
            shutil.copyfileobj(src, fh, 16 * 2**20)

    def remove(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.path.unlink(missing_ok=True)


def open_dense(path: Path) -> tuple[BundleInputs, BundleInputs, BundleInputs]:
    """A dense task's bundle: inputs, maps and reference outputs, each read a slice at a time."""
    return BundleInputs(path), BundleInputs(path, "labels"), BundleInputs(path, "reference_logits")
