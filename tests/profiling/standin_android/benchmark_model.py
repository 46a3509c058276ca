"""STAND-IN for LiteRT's benchmark_model (tests only; see README.md).

Runs the .tflite with ai-edge-litert on this machine and prints in the real tool's formats."""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def stat_line(t_us: list[float], percentiles: bool) -> str:
    a = np.asarray(t_us)
    line = (
        f"count={len(a)} first={int(a[0])} curr={int(a[-1])} min={int(a.min())} max={int(a.max())} "
        f"avg={a.mean():g} std={int(a.std())}"
    )
    if percentiles:
        p5, p50, p95 = np.percentile(a, [5, 50, 95])
        line += f" p5={int(p5)} median={int(p50)} p95={int(p95)}"
    return line


def main(argv: list[str]) -> int:
    from ai_edge_litert.interpreter import Interpreter

    f = flags(argv)
    fmt = os.environ.get("FAKE_BENCHMARK_FORMAT", "new")
    print("STARTING!")
    print("[STAND-IN benchmark_model: ai-edge-litert on the test host, not LiteRT's tool on a phone]")
    if "output_filepath" in f and os.environ.get("FAKE_BENCHMARK_NO_OUTPUT"):
        print("Unconsumed cmdline flags: --output_filepath", file=sys.stderr)
        f.pop("output_filepath")
    t0 = time.perf_counter()
    interp = Interpreter(model_path=f["graph"], num_threads=int(f.get("num_threads", 1)))
    interp.allocate_tensors()
    init_us = (time.perf_counter() - t0) * 1e6
    nodes = 12
    if f.get("use_xnnpack", "true") == "true":
        print(
            f"Replacing {nodes - 2} out of {nodes} node(s) with delegate (TfLiteXNNPackDelegate) node, "
            "yielding 3 partitions for the whole graph."
        )
    detail = interp.get_input_details()[0]
    x = np.zeros(detail["shape"], detail["dtype"])
    if "input_layer_value_files" in f:
        _name, path = f["input_layer_value_files"].rsplit(":", 1)
        x = np.fromfile(path, dtype=detail["dtype"]).reshape(detail["shape"])

    def once() -> float:
        start = time.perf_counter()
        interp.set_tensor(detail["index"], x)
        interp.invoke()
        return (time.perf_counter() - start) * 1e6

    log = os.environ.get("FAKE_ADB_ROOT")  # when each run held the phone, for the lock test
    if log:
        with open(os.path.join(log, "runs.log"), "a") as out:
            out.write(f"start {time.time()}\n")
    warm = [once() for _ in range(max(1, int(f.get("warmup_runs", 1))))]
    runs, min_secs = int(f.get("num_runs", 50)), float(f.get("min_secs", 1))
    timed: list[float] = []
    deadline = time.perf_counter() + min_secs
    while len(timed) < runs or time.perf_counter() < deadline:
        timed.append(once())
    pct = fmt == "new"
    print(f"Initialized session in {init_us / 1000:.3f}ms.")
    print(stat_line(warm, pct))
    print()
    print(stat_line(timed, pct))
    print()
    if fmt == "old":
        print(
            f"Average inference timings in us: Warmup: {np.mean(warm):g}, Init: {int(init_us)}, "
            f"no stats: {np.mean(timed):g}"
        )
    else:
        print(
            f"Inference timings in us: Init: {int(init_us)}, First inference: {int(warm[0])}, Warmup (avg): "
            f"{np.mean(warm):g}, Inference (avg): {np.mean(timed):g}"
        )
    if f.get("enable_op_profiling") == "true":
        print("============================== Run Order ==============================")
        print("Operator-wise Profiling Info for Regular Benchmark Runs:")
        print("\t             [node type]\t  [first]\t [avg ms]\t     [%]")
        print("\t      FULLY_CONNECTED\t    0.100\t    0.090\t  50.000%")
    print("Memory footprint delta from the start of the tool (MB): init=6.23 overall=11.67")
    print("Overall peak memory footprint (MB) via periodic monitoring: 14.5")
    if "output_filepath" in f:
        detail_out = interp.get_output_details()[0]
        interp.get_tensor(detail_out["index"]).tofile(f["output_filepath"])
    if log:
        with open(os.path.join(log, "runs.log"), "a") as out:
            out.write(f"end {time.time()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
