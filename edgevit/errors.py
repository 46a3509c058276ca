"""One error hierarchy for edgevit; every message says what is wrong and how to fix it."""

from __future__ import annotations


class EdgeVitError(Exception):
    """Base class of user-facing errors: the CLI prints them as one line and exits 2."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} — {fix}" if fix else message)


class RecipeError(EdgeVitError):
    """A recipe (or an override) is malformed, refers to something missing, or is out of range."""


class ModelLoadError(EdgeVitError):
    """A model name is unknown or a checkpoint cannot be loaded into the named architecture."""


class DataError(EdgeVitError):
    """A dataset source is missing, empty, unreadable or inconsistent with its manifest."""


class TargetUnavailableError(EdgeVitError):
    """A backend's library is not installed (or cannot run) on this machine."""


class LoweringError(EdgeVitError):
    """A backend failed to convert or quantize the exported model."""


class NotCheckable(EdgeVitError):
    """An artifact was built but can be neither run nor simulated on this host (the target is skipped)."""


class BuildDirError(EdgeVitError):
    """The build directory holds something unexpected (a path escaping it, a tampered file)."""


class BusyError(EdgeVitError):
    """Another process holds the lock on a build directory or cache entry (the wait timed out)."""


class GateFailed(EdgeVitError):
    """One or more gates failed; the report was written. Exit code 1."""

    exit_code = 1
