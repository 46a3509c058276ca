"""Datasets: the embedded digits and shapes sources and ImageFolder-style directories, read one
image at a time (``open_data``, ``edgevit.data.stream``) or all at once for small sets (``load_data``)."""

from __future__ import annotations

from pathlib import Path

from edgevit.data.dataset import DataSpec, RawDataset
from edgevit.data.source import ImageSource, open_data, verify

__all__ = ["DataSpec", "ImageSource", "RawDataset", "load_data", "open_data"]


def load_data(
    spec: DataSpec, class_names: list[str] | None = None, base_dir: Path | None = None
) -> RawDataset:
    """Load every image ``spec`` selects into memory; verify its sha256 when the spec records one."""
    source = open_data(spec, class_names, base_dir)
    data = source.materialize()
    if spec.sha256 is not None:
        verify(ImageSource(data.labels, data.class_names, data.description, data.images.__getitem__), spec)
    return data
