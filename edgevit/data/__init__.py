"""Datasets: the embedded digits default and ImageFolder-style directories."""

from __future__ import annotations

from pathlib import Path

from edgevit.data.dataset import DataSpec, RawDataset
from edgevit.errors import DataError

__all__ = ["DataSpec", "RawDataset", "load_data"]


def load_data(
    spec: DataSpec, class_names: list[str] | None = None, base_dir: Path | None = None
) -> RawDataset:
    """Load the images ``spec`` selects; verify its sha256 when the spec records one."""
    if spec.source == "digits":
        from edgevit.data.digits import load_digits_split

        data = load_digits_split(spec.split, spec.count, spec.seed)
    elif spec.source == "shapes":
        from edgevit.data.shapes import load_shapes_split

        data = load_shapes_split(spec.split, spec.count, spec.seed)
    else:
        from edgevit.data.folder import load_folder_split

        root = Path(spec.source).expanduser()
        if not root.is_absolute() and base_dir is not None:
            root = base_dir / root
        data = load_folder_split(root, spec.split, spec.count, spec.seed, class_names)
    if spec.sha256 is not None and data.sha256() != spec.sha256:
        raise DataError(
            f"data {data.description} has sha256 {data.sha256()[:12]}…, the manifest expects {spec.sha256[:12]}…",
            "the images changed: restore them or update the manifest's sha256",
        )
    return data
