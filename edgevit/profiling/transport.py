"""How the profiling agent reaches a device: ``local`` (a subprocess) or ``ssh://user@host[:port]``.

A transport runs ``edgevit/agent.py`` on the device with an artifact (plus its sibling files, e.g.
an OpenVINO .bin) and an optional evaluation bundle, and returns the agent's JSON document. Over
SSH (OpenSSH's ``ssh`` client) it streams them as a tar archive into a per-run temporary
directory on the device, runs the agent there, and removes the directory afterwards, whatever
happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgevit.agent import PLAN_NAME
from edgevit.errors import EdgeVitError

AGENT = Path(__file__).resolve().parent.parent / "agent.py"
SCORING = AGENT.with_name("scoring.py")  # the dense scores the agent imports, shipped beside it


class ProfileError(EdgeVitError):
    """A profile could not run: the device is unreachable, the connection dropped, or the agent refused."""


@dataclass
class AgentRun:
    """One agent invocation: the artifact (its sibling files go along), an evaluation bundle, options."""

    artifact: Path
    bundle: Path | None
    options: list[str]
    timeout_s: float = 1800.0
    runtime: str | None = None  # None: the agent picks by file type

    @property
    def files(self) -> list[Path]:
        """Everything the device needs: the artifact, files sharing its stem (OpenVINO's .bin), TensorRT's
        build plan, the bundle."""
        siblings = sorted(
            p for p in self.artifact.parent.glob(self.artifact.stem + ".*") if p != self.artifact
        )
        plan = [self.artifact.with_name(PLAN_NAME)] if self.runtime == "tensorrt" else []
        return [self.artifact, *siblings, *plan, *([self.bundle] if self.bundle else [])]

    def args(self, name: Any) -> list[str]:
        """Agent arguments, each file written as ``name(path)`` (absolute locally, a bare name remotely).
        The agent finds TensorRT's plan beside the artifact."""
        bundle = ["--bundle", name(self.bundle)] if self.bundle else []
        runtime = ["--runtime", self.runtime] if self.runtime else []
        return [name(self.artifact), *bundle, *runtime, *self.options]


class Transport(ABC):
    """Runs the agent somewhere and returns its JSON document."""

    description: str

    @abstractmethod
    def run(self, job: AgentRun) -> dict[str, Any]:
        """Run the agent; raise ProfileError on any failure (nothing partial is returned)."""


def _agent_result(stdout: str, stderr: str, code: int, where: str) -> dict[str, Any]:
    """The agent's document, or a ProfileError with its message."""
    line = next((s for s in reversed(stdout.strip().splitlines()) if s.startswith("{")), "")
    try:
        doc = json.loads(line) if line else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("ok") is False:
        raise ProfileError(f"the agent on {where} refused: {doc.get('error')}")
    if code != 0 or not isinstance(doc, dict):
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise ProfileError(f"the agent on {where} failed (exit {code}): {last[:300]}")
    return doc


@dataclass
class LocalTransport(Transport):
    """This machine: the agent runs in a subprocess of this Python, on the files where they are."""

    python: str = sys.executable
    description: str = "local"

    def run(self, job: AgentRun) -> dict[str, Any]:
        cmd = [self.python, str(AGENT), *job.args(lambda p: str(p.resolve()))]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            raise ProfileError(
                f"the local profile timed out after {job.timeout_s:g} s", "lower --runs"
            ) from None
        return _agent_result(proc.stdout, proc.stderr, proc.returncode, "this machine")


@dataclass
class SshTransport(Transport):
    """A device reached with OpenSSH (keys from the user's ssh agent/config; no passwords)."""

    user: str | None
    host: str
    port: int | None = None
    python: str = "python3"
    options: list[str] = field(default_factory=list)
    connect_timeout_s: int = 10

    @property
    def description(self) -> str:  # type: ignore[override]
        who = f"{self.user}@" if self.user else ""
        return f"ssh://{who}{self.host}{f':{self.port}' if self.port else ''}"

    def _base(self, tool: str = "ssh") -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=2",
            *self.options,
            *shlex.split(os.environ.get("EDGEVIT_SSH_OPTIONS", "")),
        ]  # fmt: skip
        if self.port:
            opts += ["-P" if tool == "scp" else "-p", str(self.port)]
        return [tool, *opts]

    @property
    def _target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _ssh(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                [*self._base("ssh"), self._target, command], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ProfileError(
                f"{self.description}: no answer within {timeout_s:g} s", "check the device, or lower --runs"
            ) from None
        if proc.returncode == 255:  # ssh's own failure: cannot connect, or the connection dropped
            last = (proc.stderr.strip().splitlines() or ["connection failed"])[-1]
            raise ProfileError(
                f"{self.description} is unreachable or the connection was lost: {last[:300]}",
                "check the address, that sshd runs there, and that your key is accepted (ssh -o BatchMode=yes)",
            )
        return proc

    def run(self, job: AgentRun) -> dict[str, Any]:
        made = self._ssh("mktemp -d /tmp/edgevit-run-XXXXXX", self.connect_timeout_s + 20)
        remote = made.stdout.strip()
        if made.returncode != 0 or not remote.startswith("/tmp/edgevit-run-"):
            raise ProfileError(
                f"{self.description}: could not make a run directory: {made.stderr.strip()[:200]}"
            )
        try:
            self._copy([AGENT, SCORING, *job.files], remote, job.timeout_s)
            quoted = " ".join(shlex.quote(a) for a in job.args(lambda p: p.name))
            proc = self._ssh(
                f"cd {shlex.quote(remote)} && {shlex.quote(self.python)} agent.py {quoted}", job.timeout_s
            )
            return _agent_result(proc.stdout, proc.stderr, proc.returncode, self.description)
        finally:
            # If the device went away, its /tmp run directory is all that is left there.
            with contextlib.suppress(ProfileError):
                self._ssh(f"rm -rf {shlex.quote(remote)}", self.connect_timeout_s + 20)

    def _copy(self, files: list[Path], remote: str, timeout_s: float) -> None:
        """Stream the files as a tar archive into ``remote`` (needs only tar there, no scp/sftp)."""
        cmd = [*self._base("ssh"), self._target, f"tar -xf - -C {shlex.quote(remote)}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        # If ssh dies, writing fails: its exit code and stderr below tell why.
        with (
            contextlib.suppress(BrokenPipeError, OSError),
            tarfile.open(fileobj=proc.stdin, mode="w|") as tar,
        ):
            for f in files:
                tar.add(str(f), arcname=f.name, recursive=False)
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()
        err = proc.stderr.read()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ProfileError(f"{self.description}: copying the artifact timed out") from None
        if proc.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or ["copy failed"])[-1]
            raise ProfileError(f"{self.description}: copying the artifact failed: {last[:300]}")


def parse_ssh_url(url: str, python: str = "python3", options: list[str] | None = None) -> SshTransport:
    """``ssh://[user@]host[:port][?python=/path/to/python3]`` as a transport."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"python"})
    if unknown:
        raise ProfileError(
            f"{url!r}: unknown parameter {', '.join(unknown)}", "only ?python=PATH is understood"
        )
    python = query.get("python", [python])[0]
    if parts.scheme != "ssh" or not parts.hostname:
        raise ProfileError(f"{url!r} is not an ssh:// address", "write it as ssh://user@host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ProfileError(f"{url!r} has an invalid port", "write it as ssh://user@host[:port]") from None
    return SshTransport(parts.username, parts.hostname, port, python, list(options or []))
