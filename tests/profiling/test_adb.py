"""Android phones over adb, through the stand-in phone (standin_android/: a fake adb and a stand-in
benchmark_model; no real phone is used here)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from edgevit.cli import main
from edgevit.devices import AndroidSettings
from edgevit.profiling import ProfileError, profile
from edgevit.profiling.adb import LOCK_DIR, AdbTransport, binary_abi
from edgevit.profiling.benchmark_log import BenchmarkLogError, parse
from edgevit.profiling.transport import AgentRun

NEW = """STARTING!
Replacing 10 out of 12 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 3 partitions.
Initialized session in 3.07ms.
count=67 first=8210 curr=7372 min=7164 max=8210 avg=7468.1 std=220 p5=7200 median=7400 p95=8000

count=134 first=7434 curr=7385 min=7138 max=8102 avg=7455.45 std=176 p5=7190 median=7420 p95=7850

Inference timings in us: Init: 3070, First inference: 8210, Warmup (avg): 7468.1, Inference (avg): 7455.45
Memory footprint delta from the start of the tool (MB): init=6.23047 overall=11.668
Overall peak memory footprint (MB) via periodic monitoring: 14.5
"""
OLD = """count=50 first=80541 curr=77412 min=76001 max=80541 avg=77524.7 std=900
Average inference timings in us: Warmup: 80541.3, Init: 173431, no stats: 77524.7
"""


def test_parses_both_summaries_and_says_which_percentiles_are_absent() -> None:
    new = parse(NEW)
    lat = new["latency_ms"]
    assert lat["p50"] == 7.42 and lat["p5"] == 7.19 and lat["p95"] == 7.85 and lat["runs"] == 134
    assert lat["mean"] == pytest.approx(7.45545) and lat["min"] == 7.138 and lat["max"] == 8.102
    assert lat["p90"] is None and lat["p99"] is None and lat["absent"] == ["p90", "p99"]
    assert new["init_ms"] == 3.07 and new["first_inference_ms"] == 8.21 and new["peak_memory_mb"] == 14.5
    assert new["delegation"] == [
        {"delegate": "TfLiteXNNPackDelegate", "nodes_delegated": 10, "nodes_total": 12}
    ]
    old = parse(OLD)
    assert old["summary_format"] == "Average inference timings in us"
    assert old["latency_ms"]["p50"] is None and "p50" in old["latency_ms"]["absent"]
    assert old["latency_ms"]["mean"] == pytest.approx(77.5247) and old["latency_ms"]["runs"] == 50
    assert old["peak_memory_mb"] is None and old["delegation"] == []
    with pytest.raises(BenchmarkLogError, match="no 'Inference timings in us' summary"):
        parse("STARTING!\nFailed to load model\n")


def test_binary_abi_from_the_elf_header(tmp_path: Path) -> None:
    elf = bytearray(b"\x7fELF\x02\x01" + bytes(14))
    for machine, abi in ((183, "arm64-v8a"), (62, "x86_64")):
        elf[18:20] = machine.to_bytes(2, "little")
        (tmp_path / "b").write_bytes(bytes(elf))
        assert binary_abi(tmp_path / "b") == abi
    (tmp_path / "b").write_text("#!/bin/sh\n")
    assert binary_abi(tmp_path / "b") is None
    (tmp_path / "b").write_text("hello")
    with pytest.raises(ProfileError, match="not an executable"):
        binary_abi(tmp_path / "b")


@pytest.fixture(scope="module")
def tiny_tflite(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("litert_torch")
    import edgevit
    from tests.conftest import tiny_recipe, write_recipe

    root = tmp_path_factory.mktemp("tflite")
    target = {"name": "tfl", "backend": "tflite", "precision": "int8"}
    recipe = tiny_recipe(
        tiny_checkpoint, [target], name="tfl", check={"runs": 2, "warmup": 1, "layerwise_samples": 0}
    )
    report = edgevit.build(write_recipe(root / "r.yaml", recipe), root / "b")
    return report.directory / report.target("tfl")["artifact"]


def test_profile_over_adb_has_the_local_documents_shape(fake_phone, tiny_tflite: Path, bundle: Path) -> None:
    local = profile(tiny_tflite, "local", runs=5, warmup=1, bundle=bundle).results[0]
    phone = profile(tiny_tflite, "adb://emulator-5554", runs=5, warmup=1, bundle=bundle, threads=2)
    assert phone.transport == "adb://emulator-5554" and phone.device == "emulator-5554"
    doc = phone.results[0]
    assert set(local) - {"input_shape"} <= set(doc), set(local) - set(doc)
    assert doc["where"] == "device:emulator-5554" and doc["runtime"] == "tflite"
    lat = doc["latency_ms"]
    assert lat["runs"] == 5 and lat["threads"] == 2 and lat["p50"] > 0 and lat["absent"] == ["p90", "p99"]
    # the same interpreter behind the stand-in: the phone's accuracy is the host's
    assert doc["accuracy"]["samples"] == 12
    assert doc["accuracy"]["sqnr_db"] == pytest.approx(local["accuracy"]["sqnr_db"], abs=1e-3)
    facts = doc["device"]
    assert facts["model"] == "Pixel 8 (stand-in)" and facts["abi"] == "arm64-v8a" and facts["android"] == "14"
    assert facts["cpus"]["cpu1"] == {"cur_mhz": 1804, "max_mhz": 2914, "governor": "schedutil"}
    assert facts["thermal_c"] == {"cpu-big": 41.2, "battery": 31.0} and facts["battery_c"] == 31.2
    assert facts["thermal_c_after"] == facts["thermal_c"]
    session = doc["session"]
    assert session["delegation"][0]["delegate"] == "TfLiteXNNPackDelegate"
    assert "--num_threads=2" in session["flags"] and "--num_runs=5" in session["flags"]
    assert doc["peak_rss_mb"] == 14.5
    assert fake_phone.leftovers() == []  # run directory and lock removed


def test_older_binary_without_percentiles_or_outputs(
    fake_phone, tiny_tflite: Path, bundle: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FAKE_BENCHMARK_FORMAT", "old")
    monkeypatch.setenv("FAKE_BENCHMARK_NO_OUTPUT", "1")
    doc = profile(tiny_tflite, "adb://emulator-5554", runs=4, warmup=1, bundle=bundle).results[0]
    assert doc["latency_ms"]["p50"] is None and "p50" in doc["latency_ms"]["absent"]
    assert doc["latency_ms"]["mean"] > 0 and "accuracy" not in doc
    assert "writes no outputs" in doc["accuracy_note"]
    assert main(["profile", str(tiny_tflite), "--device", "adb://emulator-5554", "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "p50 not reported" in out and "mean" in out


def _fails(args: list[str], capsys, match: str, out: Path) -> None:
    assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not out.exists()


def test_every_failure_is_one_line_and_writes_nothing(
    fake_phone, tiny_tflite: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    args, out = (
        ["profile", str(tiny_tflite), "--device", "adb://emulator-5554", "--runs", "3"],
        tmp_path / "p.json",
    )
    fake_phone.set_state("unauthorized")
    _fails(args, capsys, "unauthorized for adb debugging", out)
    fake_phone.set_state("absent")
    _fails(args, capsys, "no device emulator-5554", out)
    fake_phone.set_state("device")
    _fails([*args[:3], "adb://other-phone", *args[4:]], capsys, "no device other-phone", out)

    elf = bytearray(b"\x7fELF\x02\x01" + bytes(14))
    elf[18:20] = (62).to_bytes(2, "little")
    wrong = tmp_path / "x86_benchmark_model"
    wrong.write_bytes(bytes(elf))
    monkeypatch.setenv("EDGEVIT_BENCHMARK_MODEL", str(wrong))
    _fails(args, capsys, "built for x86_64, the phone runs arm64-v8a", out)
    broken = tmp_path / "broken_benchmark_model"
    broken.write_text(
        '#!/bin/sh\necho \'CANNOT LINK EXECUTABLE "./benchmark_model": library "libc++_shared.so" not found\'\nexit 1\n'
    )
    broken.chmod(0o755)
    monkeypatch.setenv("EDGEVIT_BENCHMARK_MODEL", str(broken))
    _fails(
        args, capsys, "benchmark_model failed on adb://emulator-5554 (exit 1): CANNOT LINK EXECUTABLE", out
    )
    assert fake_phone.leftovers() == []  # cleaned up after the failure
    monkeypatch.delenv("EDGEVIT_BENCHMARK_MODEL")
    _fails(args, capsys, "no benchmark_model binary named for the phone — download LiteRT's prebuilt", out)
    monkeypatch.setenv("EDGEVIT_BENCHMARK_MODEL", str(tmp_path / "nope"))
    _fails(args, capsys, "does not exist", out)

    monkeypatch.setenv("EDGEVIT_BENCHMARK_MODEL", str(fake_phone.binary))
    (fake_phone.root / "calls").unlink()
    monkeypatch.setenv("FAKE_ADB_UNPLUG_AFTER", "9")  # pushed, then gone: during the benchmark
    _fails(
        args, capsys, "emulator-5554 went away during the benchmark (unplugged?); nothing was written", out
    )
    monkeypatch.delenv("FAKE_ADB_UNPLUG_AFTER")
    assert len(fake_phone.leftovers()) == 2  # its lock and run directory: the phone was gone
    fake_phone.set_state("device")  # plugged back in: the next profile clears both and runs
    assert main([*args, "-o", str(out)]) == 0 and out.is_file() and fake_phone.leftovers() == []
    out.unlink()
    capsys.readouterr()

    monkeypatch.setenv("EDGEVIT_ADB", str(tmp_path / "no-adb"))
    _fails(args, capsys, "adb not found", out)


def test_two_profiles_at_once_take_turns(fake_phone, tiny_tflite: Path, monkeypatch) -> None:
    results: list[object] = []
    # The phone has taken the first profile's lock, but adb has not answered yet when the second
    # profile looks for a dead lock: it must not take the live one for dead.
    monkeypatch.setenv("FAKE_ADB_LOCK_LAG_S", "1.5")

    def one() -> None:
        try:
            results.append(profile(tiny_tflite, "adb://emulator-5554", runs=20, warmup=1).results[0]["ok"])
        except ProfileError as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.5)
    for t in threads:
        t.join()
    monkeypatch.delenv("FAKE_ADB_LOCK_LAG_S")
    assert results == [True, True] and fake_phone.leftovers() == []
    # the runs did not overlap on the phone: each started after the other ended
    events = [line.split() for line in (fake_phone.root / "runs.log").read_text().splitlines()]
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"]
    shell = (fake_phone.root / "shell.log").read_text().splitlines()
    assert sum(line.startswith(f"( rm -rf {LOCK_DIR} )") for line in shell) == 2  # no live lock broken
    assert float(events[2][1]) >= float(events[1][1])

    (fake_phone.tmp / "edgevit.lock").mkdir()  # another host's profile holds the phone
    busy = AdbTransport("emulator-5554", AndroidSettings(lock_timeout_s=1))
    with pytest.raises(ProfileError, match="is busy: another profile holds its lock"):
        busy.run(AgentRun(tiny_tflite, None, ["--runs", "2"]))


def test_android_build_profiles_on_the_phone_and_gates_its_latency(
    fake_phone, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("litert_torch")
    import edgevit
    from edgevit import builtin
    from edgevit.train import TrainConfig

    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))
    quick = TrainConfig(model="vit_plus_tiny_patch8_32", model_kwargs={"depth": 1}, epochs=2)
    monkeypatch.setitem(builtin.BUILTINS, "digits", quick)
    sets = [
        "data.evaluation={source: digits, split: test, count: 16}",
        "check.runs=10",
        "check.warmup=2",
        "gates.max_latency_p50_ms=10000",
        "targets=[{name: tflite-int8, backend: tflite, precision: int8, device: pixel-8}]",
    ]
    report = edgevit.build("android-tflite-int8", tmp_path / "b", overrides=sets)
    t = report.target("tflite-int8")
    assert t["where"] == "device:pixel-8" and t["latency_ms"]["runs"] == 10 and t["latency_ms"]["p50"] > 0
    assert t["device_profile"]["device"]["model"] == "Pixel 8 (stand-in)"
    assert t["reason"].startswith("latency measured on device pixel-8 by LiteRT's benchmark_model over adb")
    assert (fake_phone.root / "taskset.log").read_text().split()[0] == "1f0"  # the profile's big cores
    assert t["device_profile"]["accuracy"]["agreement"] == t["accuracy"]["agreement"]
    gate = next(g for g in report.data["gates"] if g["name"] == "max_latency_p50_ms")
    assert gate["value"] == t["latency_ms"]["p50"] and gate["passed"]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Google Pixel 8 (stand-in) (Tensor G3, Android 14, arm64-v8a), governor schedutil" in md
    assert "TfLiteXNNPackDelegate took 10 of 12 nodes" in md
    # the acceptance's command: a whole build directory profiled on the phone, same document shape
    out = tmp_path / "phone.json"
    args = ["profile", str(tmp_path / "b"), "--device", "adb://emulator-5554", "--runs", "3", "-o", str(out)]
    assert main(args) == 0
    (doc,) = json.loads(out.read_text())["results"]
    assert doc["target"] == "tflite-int8" and doc["where"] == "device:emulator-5554"
    assert doc["accuracy"]["samples"] == 16 and doc["latency_ms"]["p50"] > 0
    strict = edgevit.build(
        "android-tflite-int8",
        tmp_path / "b",
        overrides=[*sets[:3], "gates.max_latency_p50_ms=0.000001", sets[4]],
    )
    gate = next(g for g in strict.data["gates"] if g["name"] == "max_latency_p50_ms")
    assert gate["value"] is not None and not gate["passed"] and not strict.passed  # failed by value
    assert json.loads((tmp_path / "b" / "report.json").read_text())["passed"] is False
