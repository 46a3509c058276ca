"""Dense datasets on disk: images with per-pixel masks and/or depth maps.

The layout (users' own data follows it)::

    root/images/<stem>.png|.jpg    RGB images
    root/masks/<stem>.png          8-bit class index per pixel, 255 = unlabelled (segmentation)
    root/depth/<stem>.png          16-bit depth in millimetres per pixel, 0 = no depth (depth)
    root/classes.txt               segmentation: one class name per line, line k = mask value k

``root/<split>/images/...`` is used when the split folder exists; otherwise the images are split by
the fixed-seed fractions, as for ImageFolder sources. Only file names are held; each image and
its map are read when asked for.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from edgevit.data.dataset import ImageSource, Split, select
from edgevit.data.folder import IMAGE_SUFFIXES, read_image
from edgevit.errors import DataError

MAPS = {"segmentation": "masks", "depth": "depth"}
DEPTH_SCALE = 1000.0  # 16-bit depth PNG units per metre (millimetres)


def is_dense_folder(root: Path) -> bool:
    """Whether ``root`` (or its split folders) follows the dense layout."""
    return any((base / "images").is_dir() for base in (root, root / "train", root / "test"))


def dense_task(root: Path, task: str | None) -> str:
    """The task a dense folder serves: ``task`` when given, else the one map folder it has."""
    bases = [root, *(root / s for s in ("train", "val", "test"))]
    present = [t for t, folder in MAPS.items() if any((b / folder).is_dir() for b in bases)]
    if task is not None:
        if task not in present:
            raise DataError(
                f"data folder {root} has no {MAPS.get(task, task)}/ folder",
                f"add {root}/{MAPS.get(task, '?')}/",
            )
        return task
    if len(present) != 1:
        found = "both masks/ and depth/" if present else "neither masks/ nor depth/"
        raise DataError(
            f"data folder {root} has {found}", "name the task (edgevit train --task, the recipe's task)"
        )
    return present[0]


def open_dense_folder(
    root: Path, task: str, split: Split, count: int | None = None, seed: int = 0
) -> ImageSource:
    """The images of ``split`` in dense folder ``root`` with their ``task`` maps."""
    base = root / split if split != "all" and (root / split / "images").is_dir() else root
    images = base / "images"
    if not images.is_dir():
        raise DataError(f"data folder {base} has no images/ folder", "put the images in <folder>/images/")
    maps = base / MAPS[task]
    files = sorted(f for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"data folder {images} holds no PNG/JPEG images", "add images")
    idx = select(len(files), split, base is not root, count, seed, f"data folder {base}")
    chosen = [files[i] for i in idx]
    targets = [maps / f"{f.stem}.png" for f in chosen]
    missing = next((t for t in targets if not t.is_file()), None)
    if missing is not None:
        raise DataError(f"{missing} is missing", f"give every image in {images} a {MAPS[task]}/<stem>.png")
    names: list[str] = []
    if task == "segmentation":
        listing = next((b / "classes.txt" for b in (base, root) if (b / "classes.txt").is_file()), None)
        if listing is None:
            raise DataError(f"data folder {root} has no classes.txt", "list the class names, one per line")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    reader = read_mask if task == "segmentation" else read_depth
    return ImageSource(
        np.zeros(len(chosen), np.int64),
        names,
        f"{base}/{split}",
        partial(_read_at, chosen),
        partial(_map_at, reader, targets),
        task,
    )


def _read_at(paths: list[Path], k: int) -> np.ndarray:
    return read_image(paths[k])


def _map_at(reader: object, paths: list[Path], k: int) -> np.ndarray:
    return reader(paths[k])  # type: ignore[operator, no-any-return]


def _open_map(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"map {path} cannot be read ({exc})", "remove or replace the file") from None


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as uint8 H x W class indices."""
    mask = _open_map(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataError(
            f"mask {path} is not an 8-bit single-channel PNG ({mask.dtype}, {mask.shape})",
            "save masks as 8-bit grayscale PNG",
        )
    return mask


def read_depth(path: Path) -> np.ndarray:
    """A 16-bit depth PNG (millimetres) as float32 H x W metres."""
    raw = _open_map(path)
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint32, np.int16):
        raise DataError(
            f"depth {path} is not a 16-bit single-channel PNG ({raw.dtype}, {raw.shape})",
            "save depth as 16-bit grayscale PNG in millimetres",
        )
    return (raw.astype(np.float32) / np.float32(DEPTH_SCALE)).astype(np.float32)


def write_sample(
    root: Path, stem: str, image: np.ndarray, mask: np.ndarray | None, depth: np.ndarray | None
) -> None:
    """Write one sample in the layout above (depth rounded to millimetres)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    if mask is not None:
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    if depth is not None:
        (root / "depth").mkdir(exist_ok=True)
        mm = np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        Image.fromarray(mm).save(root / "depth" / f"{stem}.png")
