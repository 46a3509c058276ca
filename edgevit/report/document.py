"""The build report: report.json (machines) and report.md (people)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.quant.settings import BUDGET_LIMITS


@dataclass
class Report:
    """A finished build's report document and where it was written."""

    data: dict[str, Any]
    directory: Path

    @property
    def passed(self) -> bool:
        """True when every gate passed and no target failed."""
        return bool(self.data["passed"])

    def target(self, name: str) -> dict[str, Any]:
        """One target's entry by name."""
        return next(t for t in self.data["targets"] if t["name"] == name)


def fmt(value: Any, spec: str = "g") -> str:
    """``value`` formatted with ``spec``; a dash when it was not measured."""
    return "—" if value is None else format(value, spec)


TARGET_COLUMNS = (
    "target", "backend", "precision", "status", "where", "top-1 %", "drop (pts)", "agreement", "cosine",
    "SQNR dB", "p50 ms", "p90 ms", "p99 ms", "size",
)  # fmt: skip
GATE_COLUMNS = ("target", "gate", "limit", "value", "result")


def _dense_task(doc: dict[str, Any]) -> Any:
    """The report's dense task (None for classification, whose table is the one above)."""
    name = doc.get("task", "classification")
    if name == "classification":
        return None
    from edgevit.tasks import TASKS

    return TASKS.get(name)


def target_columns(doc: dict[str, Any]) -> tuple[str, ...]:
    """The targets table's header: the task's metrics between the target and its latency."""
    task = _dense_task(doc)
    if task is None:
        return TARGET_COLUMNS
    suffix = {"points": " (pts)", "": ""}
    metrics = tuple(m.header + suffix.get(m.unit, " " + m.unit) for m in task.metrics)
    return (*TARGET_COLUMNS[:5], *metrics, *TARGET_COLUMNS[-4:])


def reference_text(doc: dict[str, Any], bold: Callable[[str], str]) -> str:
    """The float reference's scores, e.g. ``top-1 **64.40%**`` (``bold`` marks the numbers up)."""
    ref, task = doc["reference"], _dense_task(doc)
    if task is None:
        return f"top-1 {bold(format(ref['top1'], '.2f') + '%')}"
    scores = ref.get("scores") or {}
    return f"{task.name}: " + ", ".join(
        f"{m.header} {bold(format(scores[m.key], '.4g') + ('%' if m.unit == '%' else ''))}"
        for m in task.metrics
        if m.key in scores
    )


def target_cells(t: dict[str, Any], doc: dict[str, Any] | None = None) -> list[str]:
    """One target's row of the targets table (report.md and report.html), as text."""
    acc, lat = t.get("accuracy") or {}, t.get("latency_ms") or {}
    size = t.get("size_bytes")
    task = _dense_task(doc or {})
    if task is not None:
        return [
            t["name"], t["backend"], t["precision"], t["status"], str(t.get("where")),
            *[fmt(acc.get(m.key), "+.2f" if m.unit == "points" else ".4g") for m in task.metrics],
            fmt(lat.get("p50"), ".3f"), fmt(lat.get("p90"), ".3f"), fmt(lat.get("p99"), ".3f"),
            "—" if size is None else f"{size / 1e6:.2f} MB",
        ]  # fmt: skip
    return [
        t["name"], t["backend"], t["precision"], t["status"], str(t.get("where")),
        fmt(acc.get("top1"), ".2f"), fmt(acc.get("top1_drop"), "+.2f"), fmt(acc.get("agreement"), ".4f"),
        fmt(acc.get("cosine"), ".5f"), fmt(acc.get("sqnr_db"), ".1f"), fmt(lat.get("p50"), ".3f"),
        fmt(lat.get("p90"), ".3f"), fmt(lat.get("p99"), ".3f"), "—" if size is None else f"{size / 1e6:.2f} MB",
    ]  # fmt: skip


def gate_cells(g: dict[str, Any]) -> list[str]:
    """One gate's row of the gates table; the result cell starts with ``pass`` or ``FAIL``."""
    value = "—" if g["value"] is None else f"{g['value']:.4g}"
    note = f" ({g['note']})" if g.get("note") else ""
    return [g["target"], g["name"], f"{g['limit']:g}", value, ("pass" if g["passed"] else "FAIL") + note]


def _md_row(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _stage_lines(doc: dict[str, Any]) -> list[str]:
    """The compression table: size and float accuracy of the reference and after each stage."""
    stages = doc.get("stages") or []
    if not stages:
        return []
    ref, task = doc["reference"], _dense_task(doc)
    if task is None:
        columns = [("top1", "float top-1 %", ".2f"), ("top1_drop", "drop (pts)", "+.2f")]
        ref_row = {"stage": "reference", **ref, "top1_drop": 0.0}
    else:  # the task's scores against ground truth, then what the stage lost against the reference
        metric = {m.key: m for m in task.metrics}
        lost = task.compression_gate.key
        columns = [
            (
                k,
                f"float {metric[k].header}{' %' if metric[k].unit == '%' else ''}",
                "+.4g" if k == lost else ".4g",
            )
            for k in (*task.headline, lost)
        ]
        ref_row = {"stage": "reference", **ref, **(ref.get("scores") or {}), task.compression_gate.key: 0.0}
    lines = [
        "",
        "## Compression",
        "",
        "| model | params | MACs | MACs vs reference | checkpoint | "
        + " | ".join(c[1] for c in columns)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(columns),
    ]
    for row in [ref_row, *stages]:
        lines.append(
            f"| {row['stage']} | {row['params'] / 1e6:.2f}M | {row['macs'] / 1e6:.1f}M "
            f"| {row['macs'] / ref['macs']:.3f} | {row['checkpoint_bytes'] / 1e6:.2f} MB | "
            + " | ".join(fmt(row.get(key), spec) for key, _, spec in columns)
            + " |"
        )
    compared = "drop, agreement and cosine" if task is None else "scores against the float model"
    lines += [
        "",
        f"Targets are built from the output of `{doc['lowered']['step']}`; their {compared} "
        "compare each artifact with that float model"
        + (" (the reference's drop is in report.json as `reference_top1_drop`)." if task is None else "."),
    ]
    return lines


def _settings_text(settings: dict[str, Any]) -> str:
    """``{"int8_weight_bits": 7, "tensorrt": {"version": "10.3"}}`` as ``int8 weight bits 7;
    tensorrt: version 10.3``."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items() if v is not None)
            parts.append(f"{key.replace('_', ' ')}: {inner}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts)


def _rotation_words(rotation: dict[str, Any] | None) -> str | None:
    """What the equalize step's rotation record says was rotated, in words (None: no rotation)."""
    if not rotation:
        return None
    parts = [f"values of {rotation['values']} blocks"] if rotation.get("values") else []
    if rotation.get("residual"):
        parts.append("residual stream")
    if rotation.get("fc2_hadamard"):
        parts.append(f"Hadamard ({rotation['fc2_hadamard']}) before fc2")
    seed = f" (rotation seed {rotation['seed']})" if rotation.get("seed") else ""
    return f"rotated{seed}: " + ", ".join(parts or ["nothing its structure allows"])


def _measured(equalization: dict[str, Any]) -> str:
    """The end of an equalization line: what the built artifacts measured, or why they were not."""
    measured = equalization.get("measured_sqnr_db")
    if measured:
        return "; built and measured on the calibration images: " + ", ".join(
            f"{k} {v:.1f} dB" for k, v in measured.items()
        )
    return f"; {equalization['note']}" if equalization.get("note") else ""


def _step_section(
    doc: dict[str, Any], key: str, title: str, describe: Callable[[dict[str, Any], dict[str, Any]], str]
) -> list[str]:
    """A per-target section of the INT8 steps recorded under ``key``: ``title``, then a line per
    target (``describe(target, record)`` where it applied, why not where it did not)."""
    entries = [t for t in doc["targets"] if t.get(key)]
    if not entries:
        return []
    lines = ["", title, ""]
    for t in entries:
        record = t[key]
        if not record.get("applied"):
            lines.append(f"- **{t['name']}**: not applied ({record.get('reason')})")
        else:
            lines.append(f"- **{t['name']}**: {describe(t, record)}")
    return lines


def _gptq_line(_target: dict[str, Any], g: dict[str, Any]) -> str:
    """The gptq step of one INT8 target: how many Linear layers, their weight error before and after."""
    db = g["weight_sqnr_db"]
    return (
        f"{g['layers']} Linear layers on {g['scheme']}; their outputs' error from the weights "
        f"{db['nearest']:.1f} dB below them rounded to nearest, {db['gptq']:.1f} dB with GPTQ "
        "(calibration images)"
    )


def _qat_line(t: dict[str, Any], q: dict[str, Any]) -> str:
    """The qat stage of one INT8 target: the grid it trained against, simulated SQNR before and
    after, the artifact against the original float model and against the one QAD made, time."""
    sim = q["simulated_sqnr_db"]
    acc = t.get("accuracy") or {}
    vs = acc.get("vs_qat_float") or {}
    artifact = (
        f"; artifact SQNR {acc['sqnr_db']:.1f} dB against the original float model, "
        f"{vs['sqnr_db']:.1f} dB against QAD's own (float top-1 {q.get('float_top1')}%)"
        if "sqnr_db" in acc and "sqnr_db" in vs
        else ""
    )
    return (
        f"`{q['step']}` on the {q['scheme']['backend']} grid, {q['epochs']} epochs "
        f"({q['seconds_this_run']} s, {q['images_per_second']} images/s, {q['processes']} process(es)); "
        f"simulated INT8 SQNR {sim['before']} → {sim['after']} dB{artifact}; trained ranges within "
        f"{100 * q['ranges']['max_relative_difference']:.2g}% of calibration's on the output"
        f"{' (reused)' if q.get('reused') else ''}"
    )


def _device_lines(doc: dict[str, Any]) -> list[str]:
    """Where each device-profiled target ran: the device's facts, and for a phone the delegate's
    coverage and its temperatures before and after."""
    profiled = [t for t in doc["targets"] if t.get("device_profile")]
    if not profiled:
        return []
    lines = ["", "Measured on devices:", ""]
    for t in profiled:
        p = t["device_profile"]
        dev = p.get("device") or {}
        if dev.get("system") == "Android":
            what = (
                f"{dev.get('manufacturer')} {dev.get('model')} ({dev.get('soc') or dev.get('platform')}, Android "
                f"{dev.get('android')}, {dev.get('abi')}), governor {dev.get('governor')}, battery "
                f"{dev.get('battery_c')} °C, thermal {dev.get('thermal_c')} → {dev.get('thermal_c_after')} °C"
            )
            s = p.get("session") or {}
            cover = "; ".join(
                f"{d['delegate']} took {d['nodes_delegated']} of {d['nodes_total']} nodes"
                for d in s.get("delegation", [])
            )
            absent = (t.get("latency_ms") or {}).get("absent") or []
            what += f"; benchmark_model ({s.get('summary_format')}): {cover or 'no delegate reported'}"
            what += f"; not reported by the tool: {', '.join(absent)}" if absent else ""
        else:
            what = f"{dev.get('cpu')} ({dev.get('cores')} cores, {', '.join(dev.get('cpu_flags') or []) or 'no flags'})"
        note = f"; {p['accuracy_note']}" if p.get("accuracy_note") else ""
        lines.append(f"- **{t['name']}** on {t['where']} ({p.get('runtime')}): {what}{note}")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """A people-readable summary with one row per target and one per gate."""
    ref = doc["reference"]
    lines = [
        f"# edgevit build: {doc['recipe']}",
        "",
        doc.get("description") or "",
        "",
        f"Float reference **{ref['model']}**: {reference_text(doc, lambda x: f'**{x}**')} on {ref['samples']} "
        f"images ({ref['evaluation']}), measured on the host with PyTorch.",
        *_stage_lines(doc),
        "",
        _md_row(target_columns(doc)),
        _md_row(["---"] * len(target_columns(doc))),
        *[_md_row(target_cells(t, doc)) for t in doc["targets"]],
    ]
    notes = [f"- **{t['name']}** {t['status']}: {t['reason']}" for t in doc["targets"] if t.get("reason")]
    if notes:
        lines += ["", *notes]
    lines += _device_lines(doc)
    graphs = [t for t in doc["targets"] if t.get("ops")]
    if graphs:
        lines += ["", "Ops by precision (what stayed float):", ""]
        for t in graphs:
            parts = [
                f"{kind} " + " + ".join(f"{n} {precision}" for precision, n in by_precision.items())
                for kind, by_precision in t["ops"].items()
            ]
            lines.append(f"- **{t['name']}** ({t.get('op_total', '?')} ops): {', '.join(parts)}")
    settled = [t for t in doc["targets"] if t.get("build_settings")]
    if settled:
        lines += ["", "Build settings taken from where each target runs:", ""]
        for t in settled:
            lines.append(f"- **{t['name']}**: {_settings_text(t['build_settings'])}")
    packages = [t for t in doc["targets"] if t.get("coreml")]
    if packages:
        lines += ["", "Core ML packages:", ""]
        for t in packages:
            c = t["coreml"]
            weights = ", ".join(f"{n} {kind}" for kind, n in c.get("compressed_weights", {}).items())
            lines.append(
                f"- **{t['name']}**: mode {c.get('mode')}, deployment target {c.get('deployment_target')} "
                f"(spec {c.get('specification_version')}), compressed weight tensors: {weights or 'none'}"
            )
    for t in doc["targets"]:
        sim = t.get("simulation") or {}
        if sim.get("layer_norm_fp16_overflow"):
            worst = max(sim["layer_norm_fp16_overflow"].values())
            lines.append(
                f"- **{t['name']}** FP16 risk: layer_norm squared deviations reach {worst:.3g} > 65504 "
                f"(ops {', '.join(sim['layer_norm_fp16_overflow'])}): add layer_norm to options.float32_ops"
            )
        if sim.get("first_nonfinite_op"):
            lines.append(
                f"- **{t['name']}** produced inf/NaN first at {', '.join(sim['first_nonfinite_op'])} "
                "(simulated FP16 overflow)"
            )
    fallbacks = [t for t in doc["targets"] if t.get("fallback")]
    if fallbacks:
        lines += ["", "Accuracy budget (quantize stage; layers kept float to meet it):", ""]
        for t in fallbacks:
            f = t["fallback"]
            if not f.get("applied"):
                lines.append(f"- **{t['name']}**: not applied ({f['reason']})")
                continue
            limits = ", ".join(
                f"{k} {f['budget'][k]:g}" for k in BUDGET_LIMITS if f["budget"].get(k) is not None
            )
            kept = ", ".join(f"`{n}`" for n in f["float_layers"]) or "none"
            verdict = "met" if f["met"] else "**not met** (best effort)"
            rejected = [c["float_layers"][-1] for c in f["tried"] if c.get("rejected")]
            left = (
                f"; float did not help, left quantized: {', '.join(f'`{n}`' for n in rejected)}"
                if rejected
                else ""
            )
            lines.append(
                f"- **{t['name']}**: {limits}: {verdict} with {len(f['float_layers'])} float layer(s): {kept} "
                f"({len(f['tried'])} candidate build(s){left})"
            )
            if f.get("recover"):
                ptq = f["post_training"]
                needed = {
                    "none": "nothing (post-training INT8 met it)",
                    "qat": "qat",
                    "qat+float": "qat, then float layers",
                }
                task = _dense_task(doc)
                had = (
                    f"drop {ptq['top1_drop']:+.2f}, SQNR {ptq['sqnr_db']:.1f} dB"
                    if task is None
                    else task.summary(ptq)
                )
                lines.append(
                    f"  - recover: {f['recover']}; post-training INT8 had {had}; "
                    f"needed: {needed.get(f['needed'], f['needed'])}"
                    + (f" (float layers not possible: {f['float_search']})" if f.get("float_search") else "")
                )
            sens = f.get("sensitivity") or []
            how = {"simulated": "in the INT8 simulator, no build", "measured": "one build per layer"}
            if sens and "gain_db" in sens[0]:
                note = f"; {f['ranking_note']}" if f.get("ranking_note") else ""
                lines.append(
                    f"  - most sensitive ({'logit' if _dense_task(doc) is None else 'output'} SQNR gained on "
                    "calibration images with only that layer "
                    f"float; ranked {how.get(f.get('ranking', ''), f.get('ranking'))} in "
                    f"{f.get('ranking_seconds', '?')} s{note}): "
                    + ", ".join(f"`{x['layer']}` {x['gain_db']:+.1f} dB" for x in sens[:5])
                )
    equalized = [t for t in doc["targets"] if t.get("equalization")]
    if equalized:
        lines += [
            "",
            "Equalization and rotation (quantize.equalize, quantize.rotate; folded into the float model "
            "before export):",
            "",
        ]
        for t in equalized:
            e = t["equalization"]
            rotation = _rotation_words(e.get("rotation"))
            if e.get("alpha") is None and rotation is None:
                why = e.get("reason") or "none measured best in the simulator"
                lines.append(f"- **{t['name']}**: not applied ({why}){_measured(e)}")
                continue
            scales = [p for p in e.get("pairs", [])]
            lo = min((p["scale_min"] for p in scales), default=1.0)
            hi = max((p["scale_max"] for p in scales), default=1.0)
            done = [rotation] if rotation else []
            if e.get("alpha") is not None:
                done.append(
                    f"alpha {e['alpha']:g}, {len(scales)} producer/consumer pairs, scales {lo:.3g}–{hi:.3g}"
                )
            lines.append(
                f"- **{t['name']}**: {'; '.join(done)} on the {e['scheme']['backend']} grid; simulated "
                "logit SQNR by candidate: "
                + ", ".join(f"{k} {v:.1f} dB" for k, v in e.get("simulated_sqnr_db", {}).items())
                + _measured(e)
            )
    lines += _step_section(
        doc,
        "gptq",
        "GPTQ weight rounding (quantize.weight_rounding: gptq; onto each target's own weight grid, "
        "which its quantizer then keeps):",
        _gptq_line,
    )
    lines += _step_section(
        doc,
        "qat",
        "Quantization-aware distillation (qat stage; one run per INT8 grid, then each backend's own INT8):",
        _qat_line,
    )
    failing = {g["target"] for g in doc["gates"] if not g["passed"]}
    compared = [t for t in doc["targets"] if (t.get("layerwise") or {}).get("layers")]
    if compared:
        lines += [
            "",
            "Layer-wise (each quantized layer run alone on the float model's input; lowest SQNR first):",
            "",
        ]
        for t in compared:
            worst = [x for x in t["layerwise"]["layers"] if x.get("quantized")][
                : 5 if t["name"] in failing else 3
            ]
            listed = ", ".join(f"`{x['layer']}` {x['local_sqnr_db']:.1f} dB" for x in worst)
            flag = " — **a gate failed: start here**" if t["name"] in failing else ""
            lines.append(f"- **{t['name']}**: {listed or 'no quantized layer matched'}{flag}")
    lat_runs = next(  # this host's runs; a device's are under "Measured on devices"
        (t["latency_ms"] for t in doc["targets"] if t.get("latency_ms") and t.get("where") == "host"), None
    )
    if lat_runs:
        host = doc.get("host", {})
        lines += [
            "",
            f"Latency: batch {lat_runs['batch']}, {lat_runs['threads']} threads, "
            f"{lat_runs['warmup']} warm-up + {lat_runs['runs']} timed runs per target, on "
            f"{host.get('cpu', '?')} ({host.get('cores', '?')} cores; "
            f"{', '.join(host.get('cpu_flags') or ['no AVX2/AVX-512 flags'])}).",
        ]
    lines += ["", "## Gates", "", _md_row(GATE_COLUMNS), _md_row(["---"] * len(GATE_COLUMNS))]
    for g in doc["gates"]:
        cells = gate_cells(g)
        if not g["passed"]:
            cells[-1] = "**FAIL**" + cells[-1][4:]
        lines.append(_md_row(cells))
    lines += [
        "",
        f"**Result: {'PASSED' if doc['passed'] else 'FAILED'}**",
        "",
        "Plots (accuracy vs latency, per-layer error): [report.html](report.html)",
        "",
    ]
    return "\n".join(lines)
