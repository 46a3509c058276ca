"""A content-addressed cache of ONNX exports: the same model exported again is a file copy.

torch's dynamo exporter takes seconds even for a small ViT (8 s for the digits model on 2 cores),
and a build exports the same weights more than once: the reference, and each INT8 grid's
equalized model where equalization chose nothing. The key is everything the exported graph depends
on: each module's type and plain settings (ints, floats, strings, tuples: a pooling mode as much as
a depth), every parameter and buffer's bytes, the input size, the opset and the exporter's
versions. Entries live in ``<cache_dir>/exports`` (``EDGEVIT_CACHE``), the oldest removed past
``KEEP`` entries or ``KEEP_BYTES``; ``EDGEVIT_EXPORT_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from edgevit.fileio import atomic_path
from edgevit.paths import cache_dir

KEEP = 32  # entries kept; the oldest go first
KEEP_BYTES = 2 << 30  # and no more than 2 GiB of them (a DINOv2 ViT-S export is 88 MB)
VERSION = 1  # of the export code: a change to how export_onnx builds the graph bumps it
PLAIN = (bool, int, float, str, type(None))


def enabled() -> bool:
    """Whether exports are cached (``EDGEVIT_EXPORT_CACHE=0``: not)."""
    return os.environ.get("EDGEVIT_EXPORT_CACHE", "1") != "0"


def _plain(value: object) -> bool:
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def export_key(model: nn.Module, input_size: tuple[int, int, int], opset: int) -> str:
    """The sha256 of everything ``model``'s ONNX export at ``input_size`` depends on."""
    digest = hashlib.sha256()
    head = [VERSION, opset, list(input_size), torch.__version__, _version("onnx"), _version("onnxscript")]
    digest.update(repr(head).encode())
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, module in model.named_modules():
        public = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        settings = sorted((k, repr(v)) for k, v in public.items() if _plain(v))
        digest.update(f"{name}|{type(module).__module__}.{type(module).__qualname__}|{settings}".encode())
        tensors += [(f"{name}.{k}", v) for k, v in sorted(public.items()) if isinstance(v, torch.Tensor)]
    for name, tensor in tensors:
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def cached(key: str, out: Path) -> bool:
    """Copy the export cached under ``key`` to ``out``; whether there was one."""
    entry = cache_dir() / "exports" / f"{key}.onnx"
    if not enabled() or not entry.is_file():
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(entry, tmp)
    os.utime(entry)  # recently used: kept longest
    return True


def store(key: str, exported: Path) -> None:
    """Keep a copy of ``exported`` under ``key``; drop the oldest entries past ``KEEP`` or ``KEEP_BYTES``."""
    if not enabled():
        return
    folder = cache_dir() / "exports"
    with atomic_path(folder / f"{key}.onnx") as tmp:
        shutil.copyfile(exported, tmp)
    entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for rank, entry in enumerate(entries):  # newest first: keep what fits
        total += entry.stat().st_size
        if rank >= KEEP or (rank > 0 and total > KEEP_BYTES):
            entry.unlink(missing_ok=True)
