"""report.html: the build report for people, one self-contained file (plots inlined, no network).

Plots are drawn with matplotlib (Agg) into PNGs embedded as data URIs: accuracy and logit SQNR
against p50 latency for every target of the build, and the per-layer error of each INT8 artifact
that has a layer-wise comparison.
"""

from __future__ import annotations

import html
from typing import Any

from edgevit.report.document import GATE_COLUMNS, gate_cells, reference_text, target_cells, target_columns
from edgevit.report.plotting import png as _png
from edgevit.report.plotting import pyplot as _pyplot

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#1b1b1b}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}.pass{color:#17702a}.fail{color:#b00020;font-weight:600}
.note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
"""


def _row(cells: list[str] | tuple[str, ...], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


# the accuracy-lost axis of the accuracy/latency plot, by task
_LOSS_AXIS = {
    "classification": ("top1_drop", "top-1 drop (points)"),
    "segmentation": ("miou_drop", "mIoU drop (points)"),
    "depth": ("absrel_increase", "AbsRel increase"),
    "embedding": ("cosine_distance", "1 - cosine vs float"),
}


_SQNR_AXIS = {"classification": "logit SQNR (dB)", "embedding": "feature SQNR (dB)"}


def accuracy_latency_plot(targets: list[dict[str, Any]], task: str = "classification") -> str | None:
    """Accuracy lost (top-1 drop; mIoU drop; AbsRel increase) and output SQNR against p50
    latency, one point per measured target (None if none)."""
    points = [t for t in targets if (t.get("latency_ms") or {}).get("p50") and t.get("accuracy")]
    if not points:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    loss_key, loss_label = _LOSS_AXIS[task]
    for ax, key, label in (
        (axes[0], loss_key, loss_label),
        (axes[1], "sqnr_db", _SQNR_AXIS.get(task, "output SQNR (dB)")),
    ):
        for t in points:
            x, y = t["latency_ms"]["p50"], t["accuracy"][key]
            ax.scatter([x], [min(y, 150.0)], s=48, color="#b00020" if t["precision"] == "int8" else "#1f5fbf")
            ax.annotate(t["name"], (x, min(y, 150.0)), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy lost vs latency (lower-left is better)")
    axes[1].set_title("fidelity vs latency (upper-left is better)")
    uri = _png(fig)
    plt.close(fig)
    return uri


def layerwise_plot(name: str, layers: list[dict[str, Any]]) -> str | None:
    """Per-layer SQNR of a quantized artifact: each layer alone (bars) and inside the model (line)."""
    quantized = [e for e in layers if e.get("quantized")]
    if not quantized:
        return None
    quantized.sort(key=lambda e: e.get("order", 0))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    xs = list(range(len(quantized)))
    worst = min(e["local_sqnr_db"] for e in quantized)
    colors = ["#b00020" if e["local_sqnr_db"] == worst else "#1f5fbf" for e in quantized]
    ax.bar(xs, [e["local_sqnr_db"] for e in quantized], color=colors, label="layer alone (its own error)")
    ax.plot(
        xs,
        [e["sqnr_out"] for e in quantized],
        color="#333",
        marker="o",
        ms=3,
        label="in the model (accumulated)",
    )
    ax.set_xticks(xs, [e["layer"] for e in quantized], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title(f"{name}: per-layer error (red: worst layer)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    uri = _png(fig)
    plt.close(fig)
    return uri


def render_html(doc: dict[str, Any]) -> str:
    """The whole report page."""
    e = html.escape
    ref = doc["reference"]
    verdict = "PASSED" if doc["passed"] else "FAILED"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>edgevit build: {e(doc['recipe'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>edgevit build: {e(doc['recipe'])} — <span class='{'pass' if doc['passed'] else 'fail'}'>"
        f"{verdict}</span></h1>",
        f"<p>{e(doc.get('description') or '')}</p>",
        f"<p>Float reference <b>{e(ref['model'])}</b>: {reference_text(doc, lambda x: f'<b>{e(x)}</b>')} on "
        f"{ref['samples']} images "
        f"({e(ref['evaluation'])}).</p>",
        "<h2>Targets</h2><table>" + _row(target_columns(doc), "th"),
        *[_row(target_cells(t, doc)) for t in doc["targets"]],
    ]
    parts.append("</table>")
    notes = [
        f"<li><b>{e(t['name'])}</b>: {e(str(t['reason']))}</li>" for t in doc["targets"] if t.get("reason")
    ]
    if notes:
        parts.append(f"<ul class='note'>{''.join(notes)}</ul>")
    plot = accuracy_latency_plot(doc["targets"], doc.get("task", "classification"))
    parts.append("<h2>Accuracy and latency</h2>")
    if plot:
        parts.append(f"<img alt='accuracy vs latency' src='{plot}'>")
        unmeasured = [
            t["name"] for t in doc["targets"] if t.get("accuracy") and not (t.get("latency_ms") or {})
        ]
        if unmeasured:
            parts.append(
                f"<p class='note'>Not plotted (latency not measured): {e(', '.join(unmeasured))}.</p>"
            )
    else:
        parts.append("<p class='note'>No target has a measured latency.</p>")
    task, ref_preview = doc.get("task", "classification"), doc["reference"].get("preview")
    if ref_preview is not None:
        from edgevit.report.previews import preview_plot

        shown = [t for t in doc["targets"] if t.get("preview")]
        if shown:
            parts.append(
                f"<h2>Outputs on evaluation image {ref_preview['index']}</h2><p class='note'>The input, the float "
                "model's output, the artifact's, and where they differ, per target.</p>"
            )
        for t in shown:
            picture = preview_plot(
                task, t["name"], ref_preview["input"], ref_preview["output"], t["preview"]["output"]
            )
            parts.append(f"<img alt='outputs of {e(t['name'])}' src='{picture}'>")
    for t in doc["targets"]:
        lw = t.get("layerwise") or {}
        if not lw.get("layers"):
            continue
        uri = layerwise_plot(t["name"], lw["layers"])
        if uri is None:
            continue
        worst = [x for x in lw["layers"] if x.get("quantized")][:5]
        parts.append(
            f"<h2>Per-layer error: {e(t['name'])}</h2><img alt='per-layer error of {e(t['name'])}' src='{uri}'>"
        )
        parts.append(
            "<table><tr><th>worst layers</th><th>op</th><th>alone SQNR dB</th><th>in-model SQNR dB</th>"
            "<th>cosine</th></tr>"
            + "".join(
                f"<tr><td>{e(x['layer'])}</td><td>{e(x['op'])}</td><td>{x['local_sqnr_db']:.1f}</td>"
                f"<td>{x['sqnr_out']:.1f}</td><td>{x['cosine_out']:.5f}</td></tr>"
                for x in worst
            )
            + f"</table><p class='note'>{lw['samples']} evaluation images; each quantized layer is also run alone "
            "on the float model's input to it, so its own error is separated from the error it receives.</p>"
        )
    parts.append("<h2>Gates</h2><table>" + _row(GATE_COLUMNS, "th"))
    for g in doc["gates"]:
        cells = [e(c) for c in gate_cells(g)]
        css = "pass" if g["passed"] else "fail"
        parts.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in cells[:-1]) + f"<td class='{css}'>{cells[-1]}</td></tr>"
        )
    host = doc.get("host", {})
    parts.append(
        f"</table><p class='note'>Built on {e(str(host.get('cpu', '?')))} ({host.get('cores', '?')} cores). "
        "Numbers marked simulated in <i>where</i> come from a simulation on this host, not from a device.</p>"
        "</body></html>"
    )
    return "\n".join(parts)
