"""``edgevit profile``: run the agent on an artifact, or on every artifact of a build, on one device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.agent import PLAN_NAME, RUNTIME_OF_SUFFIX, RUNTIMES, SUFFIX_OF_RUNTIME
from edgevit.devices import resolve_device
from edgevit.errors import EdgeVitError
from edgevit.fileio import confined
from edgevit.profiling.transport import AgentRun, LocalTransport, ProfileError, Transport, parse_ssh_url
from edgevit.workspace import LOWERED_BUNDLE

LOCAL_NAMES = ("local", "host")


@dataclass
class ProfileResult:
    """The agent's documents for one device, one per profiled artifact."""

    device: str
    transport: str
    results: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"device": self.device, "transport": self.transport, "results": self.results}


def transport_for(device: str) -> tuple[str, Transport, int | None]:
    """(name, transport, default threads) for ``local``/``host``, an ``ssh://`` or ``adb://`` URL or a
    profile name."""
    if device in LOCAL_NAMES:
        return "local", LocalTransport(), None
    if device.startswith("adb://"):
        from edgevit.profiling.adb import parse_adb_url

        phone = parse_adb_url(device)
        return phone.serial or "adb", phone, None
    if device.startswith("ssh://"):
        transport = parse_ssh_url(device)
        return transport.host, transport, None
    profile = resolve_device(device)
    if profile.transport == "local":
        return profile.name, LocalTransport(), profile.threads
    if profile.transport == "ssh":
        if not profile.address:
            raise ProfileError(
                f"device profile {profile.name} has no address", "set address: ssh://user@host[:port]"
            )
        return (
            profile.name,
            parse_ssh_url(profile.address, profile.python, profile.ssh_options),
            profile.threads,
        )
    if profile.transport == "adb":
        from edgevit.devices import AndroidSettings
        from edgevit.profiling.adb import AdbTransport

        settings = profile.android or AndroidSettings()
        return profile.name, AdbTransport(settings.serial, settings), profile.threads
    raise ProfileError(
        f"device {profile.name} is unreachable: its profile has transport none",
        "profile on a machine edgevit can reach (local or ssh://)",
    )


def agent_runtime(backend: str, artifact: Path) -> str | None:
    """The agent runtime that runs a target's artifact (None: the agent cannot run it)."""
    if backend in RUNTIMES and artifact.suffix == SUFFIX_OF_RUNTIME[backend]:
        return backend
    return None


def runtime_of_file(artifact: Path) -> str | None:
    """An artifact file's runtime: TensorRT when its build plan lies beside it, else by file type."""
    if artifact.suffix == ".onnx" and artifact.with_name(PLAN_NAME).is_file():
        return "tensorrt"
    return RUNTIME_OF_SUFFIX.get(artifact.suffix)


def _build_targets(build_dir: Path) -> tuple[list[tuple[str, Path, str]], Path | None]:
    """(target name, artifact, runtime) for every built target of a build the agent can run, and its bundle."""
    report_path = build_dir / "report.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgeVitError(
            f"{report_path} is not a build report ({exc})", "pass a build directory or an artifact"
        ) from None
    targets = []
    for t in report.get("targets", []):
        artifact = t.get("artifact")
        if not artifact:
            continue
        path = confined(build_dir, artifact)
        runtime = agent_runtime(t["backend"], path) if t.get("backend") else runtime_of_file(path)
        if runtime:
            targets.append((t["name"], path, runtime))
    if not targets:
        raise EdgeVitError(
            f"{build_dir} has no artifact the agent can run ({', '.join(RUNTIMES)})",
            "build an onnxruntime, openvino, tflite or tensorrt target first",
        )
    # The lowered float model's logits when compression stages changed it, else the reference's.
    bundles = [build_dir / LOWERED_BUNDLE, build_dir / "eval" / "bundle.npz"]
    return targets, next((b for b in bundles if b.is_file()), None)


def profile(
    target: Path,
    device: str,
    runs: int = 100,
    threads: int | None = None,
    warmup: int = 10,
    duration_s: float | None = None,
    batch: int = 1,
    bundle: Path | None = None,
    timeout_s: float = 1800.0,
    runtime: str | None = None,
) -> ProfileResult:
    """Profile an artifact (or every agent-runnable artifact of a build directory) on ``device``.

    ``runtime`` overrides the artifact's (a file's default: TensorRT when build_engine.json is beside
    it, else by file type; a build's: each target's backend)."""
    name, transport, default_threads = transport_for(device)
    if target.is_dir():
        items, build_bundle = _build_targets(target)
        bundle = bundle or build_bundle
        if runtime:
            items = [(n, a, runtime) for n, a, _ in items]
    elif target.is_file():
        items = [(target.name, target, runtime or runtime_of_file(target) or "")]
    else:
        raise EdgeVitError(f"{target} does not exist", "pass an artifact file or a build directory")
    options = [
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads or default_threads or 1),
    ]
    options += ["--batch", str(batch)] + (["--duration", str(duration_s)] if duration_s else [])
    results = []
    for target_name, artifact, kind in items:
        doc = transport.run(AgentRun(artifact, bundle, options, timeout_s, kind or None))
        results.append({"target": target_name, "where": f"device:{name}", **doc})
    return ProfileResult(name, transport.description, results)
