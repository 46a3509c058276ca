"""A real OpenSSH server on 127.0.0.1 with throw-away keys (`.ci/run` installs openssh-server)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Sshd:
    port: int
    user: str
    options: str  # for EDGEVIT_SSH_OPTIONS
    process: subprocess.Popen

    def url(self, python: str | None = None) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}" + (f"?python={python}" if python else "")

    def kill_all(self) -> None:
        """Kill the daemon and every process under it (sessions, the agent): the connection drops."""
        for pid in [*_descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(root: Path) -> Sshd:
    daemon = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(daemon).exists():
        pytest.skip("OpenSSH server not installed: `.ci/run` installs it (apt-get install openssh-server)")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"PidFile {root / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # OpenSSH's privilege-separation directory
    with open(root / "sshd.log", "w") as log:
        proc = subprocess.Popen([daemon, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
    options = f"-i {root / 'user_key'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    import getpass

    return Sshd(port, getpass.getuser(), options, proc)


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    monkeypatch.setenv("EDGEVIT_SSH_OPTIONS", server.options)
    yield server
    if server.process.poll() is None:
        server.kill_all()


@pytest.fixture
def bundle(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """An evaluation bundle for the tiny model: 12 random images, their float logits, labels = argmax."""
    import numpy as np

    from edgevit.models.load import load, logits_of

    x = np.random.default_rng(0).uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    ref = logits_of(load(checkpoint=tiny_checkpoint).model, x, 12)
    path = tmp_path / "bundle.npz"
    np.savez(path, inputs=x, labels=ref.argmax(1), reference_logits=ref)
    return path


@pytest.fixture
def device_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``add(name, profile)`` writes a device profile into a private targets/ directory edgevit reads."""
    import yaml

    from edgevit import devices

    profiles = tmp_path / "targets"
    profiles.mkdir()
    monkeypatch.setattr(devices, "targets_dir", lambda: profiles)
    devices.resolve_device.cache_clear()

    def add(name: str, profile: dict) -> str:
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(profile))
        devices.resolve_device.cache_clear()
        return name

    yield add
    devices.resolve_device.cache_clear()


STANDIN_ANDROID = Path(__file__).resolve().parent / "standin_android"


@dataclass
class FakePhone:
    """The stand-in phone (standin_android/README.md): a device directory behind a fake adb."""

    root: Path
    binary: Path  # the stand-in benchmark_model, as a user's binary on this machine

    def set_state(self, state: str) -> None:
        (self.root / "state").write_text(state)

    @property
    def tmp(self) -> Path:
        return self.root / "data" / "local" / "tmp"

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir())


@pytest.fixture
def fake_phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePhone:
    """A reachable stand-in phone: fake adb first on PATH, the stand-in benchmark_model named by
    EDGEVIT_BENCHMARK_MODEL, CPU frequencies and thermal zones in its /sys."""
    import sys

    root = tmp_path / "phone"
    (root / "data" / "local" / "tmp").mkdir(parents=True)
    for i in range(4):
        cpu = root / "sys" / "devices" / "system" / "cpu" / f"cpu{i}" / "cpufreq"
        cpu.mkdir(parents=True)
        (cpu / "scaling_cur_freq").write_text(f"{1704000 + 100000 * i}\n")
        (cpu / "cpuinfo_max_freq").write_text("2914000\n")
        (cpu / "scaling_governor").write_text("schedutil\n")
    for i, (kind, temp) in enumerate((("cpu-big", 41200), ("battery", 31000))):
        zone = root / "sys" / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{temp}\n")
    tools = tmp_path / "host-bin"
    tools.mkdir()
    adb = tools / "adb"
    adb.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN_ANDROID / "adb.py"} "$@"\n')
    adb.chmod(0o755)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_text(f"#!{sys.executable}\n" + (STANDIN_ANDROID / "benchmark_model.py").read_text())
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("EDGEVIT_BENCHMARK_MODEL", str(binary))
    monkeypatch.delenv("EDGEVIT_ADB", raising=False)
    phone = FakePhone(root, binary)
    phone.set_state("device")
    return phone
