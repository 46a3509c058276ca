"""A picture per dense target: the input, the float model's map, the artifact's map, and where
they differ — for the evaluation set's first image.

The pipeline stores each target's maps in report.json at no more than :data:`MAX_SIDE` pixels a
side (nearest-neighbour), as small integer lists: segmentation classes, depth in millimetres; the
input image is stored once, under the reference. report.html draws them with matplotlib.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_SIDE = 64


def _shrink(image: np.ndarray) -> np.ndarray:
    """``image`` (H x W [x C]) subsampled to at most MAX_SIDE a side (nearest: classes stay classes)."""
    step = max(1, int(np.ceil(max(image.shape[:2]) / MAX_SIDE)))
    return image[::step, ::step]


def input_preview(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> list[Any]:
    """A preprocessed 3 x H x W input as a uint8 H x W x 3 picture (normalisation undone)."""
    pixels = x.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return _shrink(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)).tolist()  # type: ignore[no-any-return]


def map_preview(task: str, output: np.ndarray) -> list[Any]:
    """One image's output (C x H x W) as a picture: class indices, or depth in millimetres."""
    if task == "segmentation":
        picture = output.argmax(0).astype(np.int64)
    else:
        picture = np.rint(np.clip(output[0], 0, 65.535) * 1000).astype(np.int64)
    return _shrink(picture).tolist()  # type: ignore[no-any-return]


def preview_plot(task: str, name: str, image: list[Any], reference: list[Any], artifact: list[Any]) -> str:
    """The four panels of one target as a PNG data URI."""
    from edgevit.report.plotting import png, pyplot

    plt = pyplot()
    ref, out = np.asarray(reference), np.asarray(artifact)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
    axes[0].imshow(np.asarray(image, np.uint8))
    if task == "segmentation":
        top = max(int(ref.max()), int(out.max()), 1)
        axes[1].imshow(ref, cmap="tab10", vmin=0, vmax=max(top, 9), interpolation="nearest")
        axes[2].imshow(out, cmap="tab10", vmin=0, vmax=max(top, 9), interpolation="nearest")
        axes[3].imshow(ref != out, cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        titles = ("input", "float classes", f"{name} classes", f"differ: {np.mean(ref != out):.1%} of pixels")
    else:
        lo, hi = float(min(ref.min(), out.min())) / 1000, float(max(ref.max(), out.max())) / 1000
        axes[1].imshow(ref / 1000, cmap="magma_r", vmin=lo, vmax=hi)
        axes[2].imshow(out / 1000, cmap="magma_r", vmin=lo, vmax=hi)
        diff = np.abs(out - ref) / np.maximum(ref, 1)
        shown = axes[3].imshow(diff, cmap="Reds", vmin=0)
        fig.colorbar(shown, ax=axes[3], fraction=0.046)
        titles = ("input", "float depth (m)", f"{name} depth", "|relative difference|")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    uri = png(fig)
    plt.close(fig)
    return uri
