"""Image sources that read one image at a time: what streaming needs.

An :class:`ImageSource` knows how many images a spec selects, their labels and class names, and
reads image ``k`` on demand (an ImageFolder decodes one file; the embedded sources draw one
image), so only the selection's index (file names and labels) is held in memory, never the
pixels. ``load_data`` (all images at once) is built on it for the small sets that fit.
"""

from __future__ import annotations

from pathlib import Path

from edgevit.data.dataset import DataSpec, ImageSource
from edgevit.errors import DataError

# the embedded dense sources: procedural scenes with masks or depth (edgevit.data.scenes)
SCENE_SOURCES = {"shapes-seg": "segmentation", "shapes-depth": "depth", "shapes-det": "detection"}


def open_data(
    spec: DataSpec,
    class_names: list[str] | None = None,
    base_dir: Path | None = None,
    task: str | None = None,
) -> ImageSource:
    """The images ``spec`` selects, to be read one at a time (with their maps for a dense source;
    ``task`` picks which maps where a folder has both); its sha256 is checked by
    :func:`verify` (reading every image), which ``load_data`` does and streaming callers may."""
    if spec.source == "digits":
        from edgevit.data.digits import open_digits

        return open_digits(spec.split, spec.count, spec.seed)
    if spec.source == "shapes":
        from edgevit.data.shapes import open_shapes

        return open_shapes(spec.split, spec.count, spec.seed)
    if spec.source == "photos":
        from edgevit.data.photos import open_photos

        return open_photos(spec.split, spec.count, spec.seed)
    if spec.source in SCENE_SOURCES:
        from edgevit.data.scenes import open_scenes

        return open_scenes(SCENE_SOURCES[spec.source], spec.split, spec.count, spec.seed)
    from edgevit.data.coco_folder import is_coco_folder, open_coco_folder
    from edgevit.data.dense_folder import dense_task, is_dense_folder, open_dense_folder
    from edgevit.data.folder import open_folder

    root = Path(spec.source).expanduser()
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    if root.is_dir() and is_coco_folder(root):
        return open_coco_folder(root, spec.split, spec.count, spec.seed)
    if root.is_dir() and is_dense_folder(root):
        return open_dense_folder(root, dense_task(root, task), spec.split, spec.count, spec.seed)
    return open_folder(root, spec.split, spec.count, spec.seed, class_names)


def require_task(source: ImageSource, task: str, field: str) -> ImageSource:
    """``source``; raise naming ``field`` when its ground truth is for another task than ``task``
    (an embedding model takes any labelled images: the labels only group them)."""
    if source.task != task and not (task == "embedding" and not source.dense):
        raise DataError(
            f"{field}: {source.description} is for {source.task}, the model for {task}",
            f"point {field} at data with {task} ground truth "
            "(shapes / an image folder; shapes-seg, shapes-depth or a dense folder; shapes-det or a COCO folder)",
        )
    return source


def check_sha256(actual: str, spec: DataSpec, description: str) -> str:
    """``actual``, the selected images' sha256; raise when ``spec`` records another."""
    if spec.sha256 is not None and actual != spec.sha256:
        raise DataError(
            f"data {description} has sha256 {actual[:12]}…, the manifest expects {spec.sha256[:12]}…",
            "the images changed: restore them or update the manifest's sha256",
        )
    return actual


def verified_sha256(source: ImageSource, spec: DataSpec) -> str:
    """The selected images' sha256 (reading each once); raise when ``spec`` records another."""
    return check_sha256(source.sha256(), spec, source.description)


def verify(source: ImageSource, spec: DataSpec) -> None:
    """Raise when ``spec`` records a sha256 that the selected images do not have (reads them only then)."""
    if spec.sha256 is not None:
        verified_sha256(source, spec)
