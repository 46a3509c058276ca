"""STAND-IN for Android's adb (tests only; see README.md): the device is a directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ["FAKE_ADB_ROOT"])
SERIAL = os.environ.get("FAKE_ADB_SERIAL", "emulator-5554")
HERE = Path(__file__).resolve().parent


def device_path(text: str) -> str:
    """Device paths mapped into the device directory."""
    for prefix in ("/data/local/tmp", "/sys/"):
        text = text.replace(prefix, str(ROOT) + prefix)
    return text


def state() -> str:
    limit = os.environ.get("FAKE_ADB_UNPLUG_AFTER")
    with open(ROOT / "calls", "a") as f:
        f.write(".")
    if limit and (ROOT / "calls").stat().st_size > int(limit):
        (ROOT / "state").write_text("absent")
    f = ROOT / "state"
    return f.read_text().strip() if f.exists() else "absent"


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    if not argv:
        return fail("adb: usage: no command specified")
    cmd, rest = argv[0], argv[1:]
    now = state()
    if cmd == "devices":
        print("List of devices attached")
        if now != "absent":
            print(f"{SERIAL}\t{now}")
        return 0
    if now == "absent" or (serial is not None and serial != SERIAL):
        return fail(f"adb: device '{serial}' not found" if serial else "adb: no devices/emulators found")
    if now == "unauthorized":
        return fail(
            "adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
            "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device."
        )
    if now == "offline":
        return fail("adb: device offline")
    if cmd == "get-state":
        print(now)
        return 0
    if cmd == "shell":
        env = {**os.environ, "PATH": f"{HERE}:{os.environ.get('PATH', '')}"}
        command = " ".join(rest)
        proc = subprocess.run(["sh", "-c", device_path(command)], env=env, capture_output=True, text=True)
        if "mkdir" in command and "edgevit.lock" in command:  # USB latency after the lock is taken
            time.sleep(float(os.environ.get("FAKE_ADB_LOCK_LAG_S", "0")))
        with open(ROOT / "shell.log", "a") as log:  # what ran, for the tests that read it
            log.write(command.replace("\n", " ") + "\n")
        sys.stdout.write(proc.stdout.replace(str(ROOT), ""))  # paths as the device names them
        sys.stderr.write(proc.stderr.replace(str(ROOT), ""))
        return proc.returncode
    if cmd in ("push", "pull"):
        *sources, dest = rest
        for src in sources:
            s = Path(device_path(src) if cmd == "pull" else src)
            d = Path(device_path(dest) if cmd == "push" else dest)
            if not s.exists():
                return fail(f"adb: error: failed to stat '{src}': No such file or directory")
            if d.is_dir():
                d = d / s.name
            if s.is_dir():
                shutil.copytree(s, d)
            else:
                shutil.copy2(s, d)
        print(f"{len(sources)} file(s) {cmd}ed. 0 skipped.")
        return 0
    return fail(f"adb: unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
