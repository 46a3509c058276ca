"""Datasets: the embedded digits and shapes sources and ImageFolder-style directories, read one
image at a time (``open_data``, ``edgevit.data.stream``) or all at once for small sets (``load_data``)."""

from __future__ import annotations

from pathlib import Path

from edgevit.data.dataset import DataSpec, ImageSource, RawDataset
from edgevit.data.source import check_sha256, open_data

__all__ = ["DataSpec", "ImageSource", "RawDataset", "load_data", "open_data"]


def load_data(
    spec: DataSpec, class_names: list[str] | None = None, base_dir: Path | None = None
) -> RawDataset:
    """Load every image ``spec`` selects into memory; verify its sha256 when the spec records one."""
    data = open_data(spec, class_names, base_dir).materialize()
    if spec.sha256 is not None:
        check_sha256(data.sha256(), spec, data.description)
    return data
