"""Android phones over adb: LiteRT's ``benchmark_model`` pushed to the phone, run, and read.

A phone has no Python, so the profiling agent cannot run there. Instead, for each ``.tflite``:

1. check adb, the device's state (unauthorized, offline, gone), its ABI against the binary's;
2. take the device lock (a directory under ``/data/local/tmp``, created atomically; another
   profile waits for it; a lock older than its holder could still be running, or left by a run of
   this host that has ended, is broken), and remove run directories failed runs left behind;
3. push the binary and the model to a fresh run directory under ``/data/local/tmp``;
4. read the device's facts (getprop, CPU frequencies and governor, thermal zones, battery);
5. run ``benchmark_model`` (threads, delegate, warm-up, runs or duration, ``taskset`` mask, op
   profiling), and parse its output (:mod:`edgevit.profiling.benchmark_log`);
6. accuracy: each of the bundle's first ``accuracy_samples`` inputs written as the model's input
   tensor, run through ``benchmark_model --input_layer_value_files … --output_filepath …`` (one
   invocation per image, all in one adb shell), the outputs pulled and scored against the float
   reference exactly as the agent scores them; a binary without ``--output_filepath`` is reported
   as unable to check accuracy, not guessed at;
7. read the thermal zones again, remove the run directory and the lock, whatever happened.

The returned document has the agent's shape (``latency_ms`` with ``p50`` where the tool printed a
median; absent percentiles are ``None`` and listed under ``latency_ms.absent``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.agent import AGENT_VERSION, fidelity, from_tensor, to_tensor
from edgevit.devices import AndroidSettings
from edgevit.profiling.android_facts import FACTS, STATE, device_facts, temperatures
from edgevit.profiling.benchmark_log import BenchmarkLogError, parse
from edgevit.profiling.transport import AgentRun, ProfileError, Transport

ADB_ENV = "EDGEVIT_ADB"
BENCHMARK_ENV = "EDGEVIT_BENCHMARK_MODEL"
DEVICE_TMP = "/data/local/tmp"
LOCK_DIR = f"{DEVICE_TMP}/edgevit.lock"
HOW_TO_GET = (
    "download LiteRT's prebuilt benchmark_model for the phone's ABI (android_aarch64_benchmark_model, "
    "linked from ai.google.dev/edge/litert/models/measurement) or build "
    "//tensorflow/lite/tools/benchmark:benchmark_model with bazel --config=android_arm64; then set "
    "android.benchmark_model: PATH in the device profile or EDGEVIT_BENCHMARK_MODEL=PATH"
)
_ELF_ABI = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86"}
_RC = "@edgevit-rc="


def _agent_options(options: list[str]) -> argparse.Namespace:
    """The agent options a profile passes (runs, warm-up, threads, batch, duration)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--duration", type=float, default=None)
    return p.parse_known_args(options)[0]


def binary_abi(path: Path) -> str | None:
    """The Android ABI an ELF executable is built for; None for a script (``#!``, ABI-independent).
    Raises ProfileError for anything else."""
    head = path.read_bytes()[:20]
    if head.startswith(b"#!"):
        return None
    if head[:4] != b"\x7fELF" or len(head) < 20:
        raise ProfileError(f"{path} is not an executable (no ELF header)", HOW_TO_GET)
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    abi = _ELF_ABI.get(machine)
    if abi is None:
        raise ProfileError(f"{path} is an ELF for machine {machine}, not an Android ABI", HOW_TO_GET)
    return abi


@dataclass
class AdbTransport(Transport):
    """A phone reached with adb (``adb://SERIAL``, or the one device adb sees)."""

    serial: str | None = None
    settings: AndroidSettings = field(default_factory=AndroidSettings)
    adb: str | None = None  # default: $EDGEVIT_ADB, else adb on PATH

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"adb://{self.serial}" if self.serial else "adb (the one device adb sees)"

    # --------------------------------------------------------------------- adb itself

    def _adb_path(self) -> str:
        name = self.adb or os.environ.get(ADB_ENV) or "adb"
        found = shutil.which(name)
        if found is None:
            raise ProfileError(
                f"adb not found ({name})",
                "install Android platform-tools (Debian: apt install adb) or set EDGEVIT_ADB=PATH",
            )
        return found

    def _call(
        self, args: list[str], timeout_s: float, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self._adb_path(), *(["-s", self.serial] if self.serial else []), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ProfileError(
                f"{self.description}: adb {args[0]} gave no answer within {timeout_s:g} s"
            ) from None

    def _device_error(self, stderr: str, during: str) -> ProfileError:
        """The one-line error for adb's own failure (the device, not the command on it)."""
        text = " ".join(stderr.split())
        who = self.serial or "the phone"
        if "unauthorized" in text:
            return ProfileError(
                f"{who} is unauthorized for adb debugging",
                "unlock the phone and accept the 'Allow USB debugging' prompt, then retry",
            )
        if "more than one device" in text:
            return ProfileError(
                "adb sees more than one device", "name one: --device adb://SERIAL (adb devices)"
            )
        if "offline" in text:
            return ProfileError(f"{who} is offline", "reconnect it (adb reconnect) and retry")
        if "not found" in text or "no devices" in text or "no emulators" in text:
            if during == "connect":
                return ProfileError(
                    f"no device {who} (adb devices does not list it)",
                    "plug the phone in with USB debugging on, or name its serial: --device adb://SERIAL",
                )
            return ProfileError(
                f"{who} went away during the {during} (unplugged?); nothing was written",
                "reconnect it and re-run the profile",
            )
        return ProfileError(
            f"{self.description}: adb failed during the {during}: {text[:300] or 'no output'}"
        )

    def _shell(self, command: str, timeout_s: float, during: str) -> tuple[int, str]:
        """Run ``command`` in the device's shell; (its exit status, its output). A missing status
        marker means adb itself failed (the device went away): a ProfileError."""
        proc = self._call(["shell", f"( {command} ); echo {_RC}$?"], timeout_s)
        out = proc.stdout
        marker = out.rfind(_RC)
        if marker < 0:
            raise self._device_error(proc.stderr or out, during)
        code = int(out[marker + len(_RC) :].split()[0] or 1)
        return code, out[:marker] + (proc.stderr or "")

    def _transfer(self, verb: str, src: str, dst: str, timeout_s: float, during: str) -> None:
        proc = self._call([verb, src, dst], timeout_s)
        if proc.returncode != 0:
            raise self._device_error(proc.stderr or proc.stdout, during)

    # --------------------------------------------------------------------- the run

    def _binary(self) -> Path:
        named = os.environ.get(BENCHMARK_ENV) or self.settings.benchmark_model
        if not named:
            raise ProfileError("no benchmark_model binary named for the phone", HOW_TO_GET)
        path = Path(named).expanduser()
        if not path.is_file():
            raise ProfileError(f"benchmark_model {path} does not exist", HOW_TO_GET)
        return path

    def _connect(self) -> None:
        proc = self._call(["get-state"], 30)
        state = proc.stdout.strip()
        if proc.returncode != 0 or state != "device":
            raise self._device_error(proc.stderr or state, "connect")

    def run(self, job: AgentRun) -> dict[str, Any]:
        if job.artifact.suffix != ".tflite" or job.runtime not in (None, "tflite"):
            raise ProfileError(
                f"{job.artifact.name}: an Android phone runs .tflite models here (benchmark_model)",
                "profile a tflite target's artifact",
            )
        opts = _agent_options(job.options)
        if opts.batch != 1:
            raise ProfileError(
                f"batch {opts.batch}: benchmark_model runs the model's own batch", "use --batch 1"
            )
        self._adb_path()
        binary = self._binary()
        abi = binary_abi(binary)
        self._connect()
        _code, text = self._shell(FACTS, 60, "device facts")
        before = device_facts(text)
        if abi is not None and abi not in (before.get("abilist") or before.get("abi") or ""):
            raise ProfileError(
                f"{binary.name} is built for {abi}, the phone runs {before.get('abilist') or before.get('abi')}",
                f"use benchmark_model for {before.get('abi')}",
            )
        with self._lock(job.timeout_s):
            code, made = self._shell(f"mktemp -d {DEVICE_TMP}/edgevit-run-XXXXXX", 30, "setup")
            remote = made.strip().splitlines()[-1] if made.strip() else ""
            if code != 0 or not remote.startswith(f"{DEVICE_TMP}/edgevit-run-"):
                raise ProfileError(
                    f"{self.description}: could not make a run directory: {made.strip()[:200]}"
                )
            try:
                return self._profile(job, opts, binary, abi, remote, before)
            finally:
                with contextlib.suppress(ProfileError):
                    self._shell(f"rm -rf {shlex.quote(remote)}", 60, "cleanup")

    def _flags(self, threads: int) -> list[str]:
        s = self.settings
        flags = [
            f"--num_threads={threads}",
            f"--use_xnnpack={'true' if s.delegate == 'xnnpack' else 'false'}",
        ]
        flags += {"gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}.get(s.delegate, [])
        return flags + (["--enable_op_profiling=true"] if s.op_profiling else []) + list(s.extra_flags)

    def _command(self, remote: str, args: list[str]) -> str:
        taskset = f"taskset {self.settings.cpu_mask} " if self.settings.cpu_mask else ""
        quoted = " ".join(shlex.quote(a) for a in args)
        return f"cd {shlex.quote(remote)} && {taskset}./benchmark_model --graph=model.tflite {quoted}"

    def _profile(
        self,
        job: AgentRun,
        opts: argparse.Namespace,
        binary: Path,
        abi: str | None,
        remote: str,
        before: dict[str, Any],
    ) -> dict[str, Any]:
        self._transfer("push", str(binary), f"{remote}/benchmark_model", job.timeout_s, "push")
        self._transfer("push", str(job.artifact), f"{remote}/model.tflite", job.timeout_s, "push")
        self._shell(f"chmod 755 {shlex.quote(remote)}/benchmark_model", 30, "push")
        timing = [f"--warmup_runs={opts.warmup}", "--warmup_min_secs=0"]
        if opts.duration:
            timing += ["--num_runs=1", f"--min_secs={opts.duration:g}"]
        else:
            timing += [f"--num_runs={opts.runs}", "--min_secs=0"]
        args = [*self._flags(opts.threads), *timing, "--report_peak_memory_footprint=true"]
        code, log = self._shell(self._command(remote, args) + " 2>&1", job.timeout_s, "benchmark")
        if code != 0:
            last = (log.strip().splitlines() or ["no output"])[-1]
            raise ProfileError(
                f"benchmark_model failed on {self.description} (exit {code}): {last[:300]}",
                "check that the binary starts there: adb shell /data/local/tmp/…/benchmark_model --help",
            )
        try:
            parsed = parse(log)
        except BenchmarkLogError as exc:
            raise ProfileError(
                f"{self.description}: {exc}", "run benchmark_model by hand to see why"
            ) from None
        latency = {**parsed["latency_ms"], "warmup": opts.warmup, "batch": 1, "threads": opts.threads}
        if latency["runs"] is None:
            latency["runs"] = opts.runs if not opts.duration else None
        doc: dict[str, Any] = {
            "ok": True,
            "agent_version": AGENT_VERSION,
            "artifact": job.artifact.name,
            "runtime": "tflite",
            "versions": {"benchmark_model": parsed.get("version") or "unversioned"},
            "latency_ms": latency,
            "throughput_ips": round(1000.0 / latency["mean"], 2) if latency.get("mean") else None,
            "device": before,
            "peak_rss_mb": parsed["peak_memory_mb"],
            "session": {
                "tool": "benchmark_model",
                "binary": binary.name,
                "binary_sha256": hashlib.sha256(binary.read_bytes()).hexdigest(),
                "binary_abi": abi or "script (ABI-independent)",
                "summary_format": parsed["summary_format"],
                "init_ms": parsed["init_ms"],
                "first_inference_ms": parsed["first_inference_ms"],
                "delegation": parsed["delegation"],
                "delegate": self.settings.delegate,
                "cpu_mask": self.settings.cpu_mask,
                "flags": args,
            },
        }
        if self.settings.op_profiling:
            doc["session"]["op_profile"] = _op_profile(log)
        if job.bundle is not None and self.settings.accuracy_samples > 0:
            doc.update(self._accuracy(job, opts.threads, remote))
        _code, text = self._shell(STATE, 60, "device facts")
        after = temperatures(text)
        doc["device"] = {
            **before,
            "thermal_c_after": after["thermal_c"],
            "battery_c_after": after["battery_c"],
        }
        return doc

    def _accuracy(self, job: AgentRun, threads: int, remote: str) -> dict[str, Any]:
        """Run the bundle's first inputs on the phone, one benchmark_model invocation each; the
        ``accuracy`` entry, or ``accuracy_note`` saying why there is none."""
        from edgevit.agent import dense_accuracy, interpreter_class, open_scored_bundle

        assert job.bundle is not None
        interp = interpreter_class()(model_path=str(job.artifact))
        detail_in, detail_out = interp.get_input_details()[0], interp.get_output_details()[0]
        x, all_labels, all_reference = open_scored_bundle(job.bundle)
        n = min(len(x), self.settings.accuracy_samples)
        inputs = np.ascontiguousarray(x[:n], dtype=np.float32)
        labels, reference = np.asarray(all_labels[:n]), np.asarray(all_reference[:n])
        x.close()
        if int(detail_in["shape"][0]) != 1:
            return {"accuracy_note": "not checked on the phone: the model's batch is not 1"}
        name = str(detail_in["name"]).replace(":", "::")  # benchmark_model's escape for ':' in a name
        with tempfile.TemporaryDirectory(prefix="edgevit-adb-") as tmp:
            local = Path(tmp)
            (local / "in").mkdir()
            for i in range(n):
                (local / "in" / f"{i}.bin").write_bytes(to_tensor(inputs[i : i + 1], detail_in).tobytes())
            self._transfer("push", str(local / "in"), f"{remote}/in", job.timeout_s, "push")
            one = self._command(
                remote,
                [
                    *self._flags(threads),
                    "--num_runs=1",
                    "--warmup_runs=0",
                    "--min_secs=0",
                    "--warmup_min_secs=0",
                ],
            )
            loop = (
                f"mkdir -p {shlex.quote(remote)}/out && i=0 && while [ $i -lt {n} ]; do "
                f"{one} --input_layer_value_files={shlex.quote(name)}:in/$i.bin --output_filepath=out/$i.bin "
                "> last.log 2>&1 || { tail -n 1 last.log; exit 4; }; i=$((i+1)); done"
            )
            code, out = self._shell(loop, job.timeout_s, "accuracy run")
            if code != 0:
                why = out.strip()[:200]
                return {
                    "accuracy_note": f"not checked on the phone: benchmark_model failed on an input ({why})"
                }
            self._transfer("pull", f"{remote}/out", str(local / "pulled"), job.timeout_s, "pull")
            found = sorted((local / "pulled").rglob("*.bin"))
            if len(found) != n:
                return {
                    "accuracy_note": "not checked on the phone: this benchmark_model writes no outputs "
                    "(--output_filepath needs LiteRT/TensorFlow 2.10 or newer)"
                }
            width = int(np.prod(detail_out["shape"]))
            logits = []
            for i in range(n):
                raw = np.fromfile(local / "pulled" / f"{i}.bin", dtype=np.dtype(detail_out["dtype"]))
                if raw.size < width:
                    return {
                        "accuracy_note": f"not checked on the phone: output {i} has {raw.size} values, not {width}"
                    }
                y = raw[:width].reshape([int(d) for d in detail_out["shape"]])
                y = from_tensor(y, detail_out)
                logits.append(y if reference.ndim == 4 else y.reshape(1, -1))  # dense maps keep their shape
        if reference.ndim == 4:
            return {"accuracy": dense_accuracy([(np.concatenate(logits), labels, reference)])}
        scores = fidelity(np.concatenate(logits), labels, reference)
        return {"accuracy": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()}}

    @contextlib.contextmanager
    def _lock(self, job_timeout_s: float) -> Any:
        """Hold the phone's profile lock (a directory made atomically); wait for another holder up to
        ``lock_timeout_s``, and break a lock older than any run could hold it."""
        wait = int(self.settings.lock_timeout_s)
        stale = int(job_timeout_s + wait + 60)
        token = secrets.token_hex(6)
        self._break_dead_lock()
        holder = shlex.quote(
            f"host={socket.gethostname()} pid={os.getpid()} token={token} since={time.strftime('%H:%M:%S')}"
        )
        take = (
            f"i=0; while ! mkdir {LOCK_DIR} 2>/dev/null; do "
            f"since=$(cat {LOCK_DIR}/since 2>/dev/null || date +%s); "
            f"if [ $(( $(date +%s) - since )) -gt {stale} ]; then rm -rf {LOCK_DIR}; continue; fi; "
            f"if [ $i -ge {wait} ]; then echo busy: $(cat {LOCK_DIR}/holder 2>/dev/null); exit 3; fi; "
            f"i=$((i+1)); sleep 1; done; date +%s > {LOCK_DIR}/since; echo {holder} > {LOCK_DIR}/holder"
        )
        # The token counts as held from before the phone writes it: another thread of this process
        # that reads the holder file between the phone's mkdir and our return must not break it.
        _HELD.add(token)
        try:
            code, out = self._shell(take, wait + 60, "lock")
        except BaseException:
            _HELD.discard(token)
            raise
        if code != 0:
            _HELD.discard(token)
            raise ProfileError(
                f"{self.description} is busy: another profile holds its lock ({out.strip()[:200]})",
                f"wait for it, or raise android.lock_timeout_s ({wait:g} s)",
            )
        try:
            # Holding the lock, no other profile runs here: any run directory is a failed run's.
            self._shell(f"rm -rf {DEVICE_TMP}/edgevit-run-*", 60, "setup")
            yield
        finally:
            _HELD.discard(token)
            with contextlib.suppress(ProfileError):
                self._shell(f"rm -rf {LOCK_DIR}", 30, "cleanup")

    def _break_dead_lock(self) -> None:
        """Remove a lock a profile from this host left behind and no longer holds (its process is
        gone, or it is this process and the run ended): e.g. the phone was unplugged mid-run, so the
        run could not remove it. A lock from another host waits, or is broken once stale."""
        _code, out = self._shell(f"cat {LOCK_DIR}/holder 2>/dev/null", 30, "lock")
        found = re.search(r"host=(\S+) pid=(\d+) token=(\w+)", out)
        if found is None or found.group(1) != socket.gethostname():
            return
        pid, token = int(found.group(2)), found.group(3)
        if (pid == os.getpid() and token not in _HELD) or (pid != os.getpid() and not _alive(pid)):
            self._shell(f"rm -rf {LOCK_DIR}", 30, "lock")


_HELD: set[str] = set()  # the tokens of the phone locks this process holds now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _op_profile(log: str) -> list[str]:
    """The op-profiling table's lines (``--enable_op_profiling``), as the tool printed them."""
    lines = log.splitlines()
    start = next((i for i, s in enumerate(lines) if "Operator-wise Profiling Info" in s), None)
    return [] if start is None else [s for s in lines[start : start + 80] if s.strip()]


def parse_adb_url(url: str, settings: AndroidSettings | None = None) -> AdbTransport:
    """``adb://SERIAL`` (or ``adb://`` for the one device adb sees) as a transport."""
    serial = url.removeprefix("adb://").strip("/") or None
    if serial is not None and not re.fullmatch(r"[\w.:\-]+", serial):
        raise ProfileError(
            f"{url!r} is not an adb serial", "write it as adb://SERIAL (adb devices lists them)"
        )
    return AdbTransport(serial, settings or AndroidSettings())
