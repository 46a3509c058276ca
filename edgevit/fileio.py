"""Atomic file writes, hashing, and path confinement for build directories."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgevit.errors import BuildDirError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file (or of every file below a directory, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def stable_json(obj: Any) -> str:
    """Serialise ``obj`` deterministically (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, move it over ``path``.

    Readers see the old file or the complete new one, never half of it. The block writes the
    temporary file by name (torch.save, safetensors, write_bytes); it is flushed to disk before
    the rename and removed if the block fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written staging directory into place, replacing ``final`` if it exists."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)


def ensure_dir(path: Path, what: str) -> Path:
    """Create directory ``path`` (and its parents) or raise BuildDirError naming ``what`` (e.g.
    ``-o``) when it, or a folder above it, is an existing file; nothing there is touched."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BuildDirError(
            f"{what} {path} is a file, not a directory", "choose a directory (new or existing) instead"
        ) from None
    except PermissionError:
        raise BuildDirError(
            f"{what} {path}: permission denied", "choose a writable directory instead"
        ) from None
    return path


def check_output_file(path: Path, what: str) -> Path:
    """Raise BuildDirError naming ``what`` (e.g. ``--junit``) unless ``path`` can be written as a file:
    not a directory, and no file where a folder above it should be. Checked before the work that
    produces it, so a long run does not end in a traceback."""
    if path.is_dir():
        raise BuildDirError(f"{what} {path} is a directory", f"give {what} a file name, e.g. {path / 'out'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BuildDirError(
                    f"{what} {path}: {parent} is a file, not a directory", f"give {what} another path"
                )
            break
    return path


def confined(root: Path, relative: str | Path) -> Path:
    """Resolve ``relative`` under ``root``; raise if it escapes ``root`` (``..``, absolute, links)."""
    base = root.resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise BuildDirError(
            f"path {str(relative)!r} points outside the build directory {root}",
            "delete the build directory's record files (step.json) or the whole build directory",
        )
    return candidate
