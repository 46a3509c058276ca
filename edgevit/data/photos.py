"""Real photographs shipped inside PyPI wheels, cut into crops (``source: photos``).

The photos are files in the installed scikit-image wheel (``skimage/data/``) and scikit-learn
(``sklearn/datasets/images/``): read from disk, never downloaded (scikit-image's pooch fetcher is
not used; only files present in the wheel are). The class of a crop is the photo it came from.

====================  =====================  ==========  ===============================================
class name            file                   size (WxH)  licence (as stated by the shipping package)
====================  =====================  ==========  ===============================================
astronaut             skimage astronaut.png  512x512     public domain (NASA; Eileen Collins)
chelsea               skimage chelsea.png    451x300     CC0 (Stefan van der Walt)
coffee                skimage coffee.png     600x400     CC0 (Rachel Michetti)
rocket                skimage rocket.jpg     640x427     public domain (SpaceX; DSCOVR launch)
hubble_deep_field     skimage hubble_deep…   1000x872    public domain (NASA / HubbleSite)
immunohistochemistry  skimage ihc.png        512x512     no known copyright restrictions (CMMI)
retina                skimage retina.jpg     1411x1411   CC0 1.0 (Mikael Häggström, Wikimedia)
camera                skimage camera.png     512x512     CC0 (Lav Varshney); grey, copied to RGB
brick                 skimage brick.png      512x512     CC0 (CC0Textures); grey, copied to RGB
grass                 skimage grass.png      512x512     CC0 (DeviantArt linolafett); grey, to RGB
gravel                skimage gravel.png     512x512     CC0 (CC0Textures); grey, copied to RGB
china                 sklearn china.jpg      640x427     CC BY 2.0 (danielbuechele, Flickr)
flower                sklearn flower.jpg     640x427     CC BY 2.0 (vultilion, Flickr)
====================  =====================  ==========  ===============================================

Licences are from the docstrings of ``skimage.data`` (scikit-image 0.26) and
``sklearn/datasets/images/README.txt``; the two CC BY photos need attribution where the images
are redistributed. Left out: the Middlebury motorcycle stereo pair (no licence stated), synthetic
images (logo, colour wheel, chessboards, phantom, horse) and scans of text.

Each photo gives :data:`CROPS_PER_PHOTO` square crops (see :data:`CROPS`) at three scales of its
short side S: 0.9·S at the centre and the four corners, 0.65·S on a 3x3 grid, 0.45·S on a 2x2 grid
between those (never below 224 px), each resized (bicubic) to :data:`SIZE` x :data:`SIZE` RGB uint8
— the pre-crop size of a 224-px model, whose transform then only centre-crops. Crops of one photo
overlap (the neighbours on a grid share most of their pixels, the scales nest), and the split is
over crops (``split_indices`` like the other embedded sources), so train and test hold different
crops of the same photos. Crop ``k`` is a pure function of ``k``; decoded photos are cached two at a
time (reads in index order go photo by photo), so memory does not grow with the selection.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.data.dataset import ImageSource, Split, split_indices, take
from edgevit.errors import DataError

# (class name, package, file under the package's image directory), in label order
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "skimage", "ihc.png"),
    ("retina", "skimage", "retina.jpg"),
    ("camera", "skimage", "camera.png"),
    ("brick", "skimage", "brick.png"),
    ("grass", "skimage", "grass.png"),
    ("gravel", "skimage", "gravel.png"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
)
CLASS_NAMES = [name for name, _, _ in PHOTOS]
# where each package keeps its images, relative to its top-level package directory
_IMAGE_DIRS = {"skimage": ("data",), "sklearn": ("datasets", "images")}
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}
SIZE = 256
MIN_CROP = 224


def _grid(fraction: float, positions: tuple[float, ...]) -> list[tuple[float, float, float]]:
    return [(fraction, u, v) for v in positions for u in positions]


# (side as a fraction of the short side, x and y of the crop's origin as a fraction of the free range)
CROPS: tuple[tuple[float, float, float], ...] = (
    (0.9, 0.5, 0.5),
    *_grid(0.9, (0.0, 1.0)),
    *_grid(0.65, (0.0, 0.5, 1.0)),
    *_grid(0.45, (0.25, 0.75)),
)
CROPS_PER_PHOTO = len(CROPS)
COUNT = len(PHOTOS) * CROPS_PER_PHOTO


def image_dir(package: str) -> Path:
    """The directory of ``package``'s shipped images (found without importing the package);
    raise :class:`DataError` when the package is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = _DISTRIBUTIONS[package]
        raise DataError(
            f"data source 'photos' needs {dist} (module {package!r}), which is not installed",
            f"pip install {dist} (tools/setup.sh installs it)",
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_IMAGE_DIRS[package])


def photo_paths() -> list[Path]:
    """The files of :data:`PHOTOS`, in label order; raise when a package or file is missing."""
    dirs = {package: image_dir(package) for package in _IMAGE_DIRS}
    paths = [dirs[package] / file for _, package, file in PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"data source 'photos' is missing {len(missing)} image file(s): {', '.join(missing)}",
            "reinstall scikit-image and scikit-learn (pip install --force-reinstall scikit-image scikit-learn)",
        )
    return paths


@lru_cache(maxsize=2)
def _photo(path: Path) -> Any:
    """A decoded photo as an RGB PIL image (at most two are held at a time)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of crop number ``crop`` of a ``width`` x ``height`` photo."""
    fraction, u, v = CROPS[crop]
    side = min(max(round(min(width, height) * fraction), MIN_CROP), width, height)
    left, top = round((width - side) * u), round((height - side) * v)
    return left, top, left + side, top + side


def render(paths: list[Path], index: int) -> tuple[np.ndarray, int]:
    """Crop ``index`` (SIZE x SIZE x 3 uint8) and its class, the photo it is cut from."""
    from PIL import Image

    label, crop = divmod(index, CROPS_PER_PHOTO)
    img = _photo(paths[label])
    box = crop_box(img.width, img.height, crop)
    out = img.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8), label


def _render_at(paths: list[Path], indices: np.ndarray, k: int) -> np.ndarray:
    return render(paths, int(indices[k]))[0]


def open_photos(split: Split, count: int | None = None, seed: int = 0) -> ImageSource:
    """Crops of the shipped photos in one split (SIZE x SIZE x 3 uint8), each cut when read;
    label = the photo. Raise :class:`DataError` when scikit-image (or a file) is missing."""
    paths = photo_paths()
    idx = take(split_indices(COUNT, split), count, seed)
    return ImageSource(
        idx.astype(np.int64) // CROPS_PER_PHOTO,  # render()'s rule: the index picks the photo
        list(CLASS_NAMES),
        f"photos/{split}" + (f"[{count}@{seed}]" if count else ""),
        partial(_render_at, paths, idx),
    )
