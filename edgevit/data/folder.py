"""ImageFolder-style sources: one sub-directory per class holding PNG/JPEG files."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from edgevit.data.dataset import ImageSource, Split, select
from edgevit.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_folder(
    root: Path, split: Split, count: int | None = None, seed: int = 0, class_names: list[str] | None = None
) -> ImageSource:
    """The images of ``split`` in ``root``, read when asked for (only their paths are held).

    ``root/<split>/<class>/*.png`` is used when it exists; otherwise ``root/<class>/*.png`` is
    split by the fixed-seed fractions. ``class_names`` (the model's) fixes the label order.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", "check data.*.source")
    base = root / split if split != "all" and (root / split).is_dir() else root
    classes = _class_dirs(base)
    if not classes:
        raise DataError(
            f"image folder {base} has no class sub-directories", "put images in <folder>/<class>/"
        )
    names = [c.name for c in classes]
    order = class_names or names
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise DataError(f"image folder {base} has classes the model does not know: {unknown}", "rename them")
    files: list[tuple[Path, int]] = []
    for cdir in classes:
        files += [
            (f, order.index(cdir.name)) for f in sorted(cdir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not files:
        raise DataError(f"image folder {base} holds no PNG/JPEG images", "add images to its class folders")
    idx = select(len(files), split, base is not root, count, seed, f"image folder {base}")
    chosen = [files[i][0] for i in idx]
    labels = np.asarray([files[i][1] for i in idx], dtype=np.int64)
    return ImageSource(labels, list(order), f"{base}/{split}", partial(_read_at, chosen))


def _read_at(paths: list[Path], k: int) -> np.ndarray:
    return read_image(paths[k])


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 H x W x 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image {path} cannot be read ({exc})", "remove or replace the file") from None
