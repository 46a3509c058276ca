"""Evaluation bundles written batch by batch: the images a build checks every artifact on, with
their labels and the float reference's logits.

The file is the ``np.savez`` layout (``inputs``, ``labels``, ``reference_logits``, stored
uncompressed), so ``np.load`` reads it as before, while ``edgevit.agent.open_bundle`` reads its
inputs a slice at a time: neither writing nor reading holds the set in memory.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from edgevit.agent import BundleInputs, open_bundle

__all__ = ["BundleInputs", "Inputs", "open_bundle", "write_bundle"]

Inputs = np.ndarray | BundleInputs  # evaluation images: an array, or a bundle's read by slices


def write_bundle(
    path: Path,
    count: int,
    item_shape: Sequence[int],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | Callable[[], np.ndarray],
) -> None:
    """Write ``count`` inputs of ``item_shape`` from ``batches`` of (inputs, reference outputs),
    then ``labels`` (or what ``labels()`` gives once the batches are written: a dense task's maps,
    gathered as they stream by) and the gathered outputs, into the .npz at ``path``."""
    logits: list[np.ndarray] = []
    written = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("inputs.npy", "w", force_zip64=True) as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(fh, {**header, "shape": (count, *item_shape)})
            for x, y in batches:
                fh.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                written += len(x)
                logits.append(np.asarray(y, dtype=np.float32))
        if written != count:
            raise ValueError(f"bundle {path}: {written} inputs written, {count} announced")
        truth = labels() if callable(labels) else labels
        for name, array in (("labels", np.asarray(truth)), ("reference_logits", np.concatenate(logits))):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, array)
