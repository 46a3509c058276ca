"""``edgevit validate``: re-check a finished build against its float reference and gates, for CI.

It first verifies every file of the build against ``manifest.json`` (a changed or missing artifact
is an error, never a silent rebuild), then runs every artifact again on the build's evaluation set,
scores it against the float model it was lowered from, applies the recipe's gates and, given a
previous build's report, fails on a regression beyond a tolerance. Results come as JUnit XML (one
test case per target and gate) and as Markdown for a pull-request comment.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.check import accuracy, gates, latency
from edgevit.check.bundle import Inputs, open_bundle, open_dense
from edgevit.check.gates import GateResult
from edgevit.devices import resolve_device
from edgevit.errors import BuildDirError, EdgeVitError, NotCheckable
from edgevit.fileio import confined, sha256_file
from edgevit.models.config import ModelConfig
from edgevit.recipe.schema import Recipe
from edgevit.report.document import fmt
from edgevit.tasks import TASKS
from edgevit.tasks.base import score_run
from edgevit.workspace import DEFAULT_WAIT_S, LOWERED_BUNDLE, lock_build_dir


@dataclass
class Validation:
    """What ``edgevit validate`` found: re-checked targets, gate results, files verified."""

    recipe: str
    build_dir: Path
    targets: list[dict[str, Any]]
    gates: list[GateResult]
    files_verified: int
    baseline: str | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    task: str = "classification"

    @property
    def passed(self) -> bool:
        """Every gate passed and no target failed to re-check."""
        return all(g.passed for g in self.gates) and all(t["status"] != "failed" for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "recipe": self.recipe,
            **({"task": self.task} if self.task != "classification" else {}),
            "build_dir": str(self.build_dir),
            "passed": self.passed,
            "files_verified": self.files_verified,
            "baseline": self.baseline,
            "duration_s": self.duration_s,
            "targets": self.targets,
            "gates": [g.to_dict() for g in self.gates],
            "notes": self.notes,
        }

    def junit(self) -> str:
        """JUnit XML: a test suite for the build, a test case per target and gate (and per re-check)."""
        suite = ET.Element("testsuite", name=f"edgevit validate {self.recipe}", time=f"{self.duration_s:.2f}")
        failures = skipped = 0
        for t in self.targets:
            case = ET.SubElement(
                suite, "testcase", classname=f"edgevit.{self.recipe}.{t['name']}", name="recheck"
            )
            if t["status"] == "failed":
                failures += 1
                ET.SubElement(case, "failure", message=str(t.get("reason"))).text = str(t.get("reason"))
            elif not t.get("rechecked"):
                skipped += 1
                why = t.get("note") if t["status"] == "ok" else t.get("reason")
                ET.SubElement(case, "skipped", message=str(why))
        for g in self.gates:
            case = ET.SubElement(
                suite, "testcase", classname=f"edgevit.{self.recipe}.{g.target}", name=g.name
            )
            if not g.passed:
                failures += 1
                message = f"{g.target}: {g.name} {fmt(g.value)} against limit {fmt(g.limit)}"
                message += f" ({g.note})" if g.note else ""
                ET.SubElement(case, "failure", message=message).text = message
            elif g.value is None:
                skipped += 1
                ET.SubElement(case, "skipped", message=g.note or "not measured")
        suite.set("tests", str(len(self.targets) + len(self.gates)))
        suite.set("failures", str(failures))
        suite.set("skipped", str(skipped))
        root = ET.Element("testsuites")
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def _table_head(self) -> list[str]:
        if self.task == "classification":
            return [
                "| target | backend | precision | checked | top-1 % | drop | agreement | cosine | SQNR dB | p50 ms "
                "| gates |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        metrics = [m.header for m in TASKS.get(self.task).metrics]
        head = ["target", "backend", "precision", "checked", *metrics, "p50 ms", "gates"]
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def markdown(self) -> str:
        """A summary for a pull-request comment."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"### edgevit validate `{self.recipe}`: {'✅' if self.passed else '❌'} {verdict}",
            "",
            f"{self.files_verified} files matched manifest.json; {sum(bool(t.get('rechecked')) for t in self.targets)} "
            f"of {len(self.targets)} artifacts re-checked on the evaluation set"
            + (f"; compared with baseline `{self.baseline}`" if self.baseline else "")
            + ".",
            "",
            *self._table_head(),
        ]
        for t in self.targets:
            a, lat = t.get("accuracy") or {}, t.get("latency_ms") or {}
            own = [g for g in self.gates if g.target == t["name"]]
            mark = "—" if not own else ("✅" if all(g.passed for g in own) else "❌")
            where = t.get("where", "") if t["status"] == "ok" else f"{t['status']}: {t.get('reason')}"
            if self.task != "classification":
                cells = [
                    fmt(a.get(m.key), "+.2f" if m.unit == "points" else ".4g")
                    for m in TASKS.get(self.task).metrics
                ]
                lines.append(
                    f"| {t['name']} | {t['backend']} | {t['precision']} | {where} | {' | '.join(cells)} | "
                    f"{fmt(lat.get('p50'), '.3f')} | {mark} |"
                )
                continue
            lines.append(
                f"| {t['name']} | {t['backend']} | {t['precision']} | {where} | {fmt(a.get('top1'), '.2f')} | "
                f"{fmt(a.get('top1_drop'), '+.2f')} | {fmt(a.get('agreement'), '.4f')} | "
                f"{fmt(a.get('cosine'), '.5f')} | {fmt(a.get('sqnr_db'), '.1f')} | {fmt(lat.get('p50'), '.3f')} | "
                f"{mark} |"
            )
        failed = [g for g in self.gates if not g.passed]
        if failed:
            lines += ["", "**Failed gates**", ""]
            lines += [
                f"- `{g.target}` {g.name}: {fmt(g.value)} against limit {fmt(g.limit)}"
                + (f" ({g.note})" if g.note else "")
                for g in failed
            ]
        for t in self.targets:
            worst = [x for x in (t.get("layerwise") or {}).get("layers", []) if x.get("quantized")][:5]
            if worst:
                lines += [
                    "",
                    f"**Where INT8 hurts `{t['name']}` most** (each layer run alone on float inputs)",
                    "",
                ]
                lines += [
                    f"- `{w['layer']}`: SQNR {w['local_sqnr_db']:.1f} dB alone, {w['sqnr_out']:.1f} dB in the model"
                    for w in worst
                ]
        if self.notes:
            lines += ["", *[f"_{n}_" for n in self.notes]]
        return "\n".join(lines) + "\n"


def verify_files(build_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every file listed in ``manifest.json`` against its sha256 (but those under the ``skip``
    directories, whose artifacts are being replaced); return the manifest."""
    path = build_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise BuildDirError(
            f"{path} is missing or unreadable ({exc})", "pass a directory that `edgevit build` wrote"
        ) from None
    for entry in files:
        if skip and entry["path"].startswith(skip):
            continue
        file = confined(build_dir, entry["path"])
        if not file.exists():
            raise BuildDirError(
                f"{entry['path']} is listed in manifest.json but missing",
                "re-run edgevit build to re-make it",
            )
        digest = sha256_file(file)
        if digest != entry["sha256"]:
            raise BuildDirError(
                f"{entry['path']} was changed after the build: sha256 {digest[:12]}… does not match "
                f"manifest.json's {entry['sha256'][:12]}…",
                "restore the file, or re-run edgevit build to re-make it",
            )
    return dict(manifest)


def _reference(build_dir: Path, report: dict[str, Any]) -> tuple[Inputs, Inputs, Inputs]:
    """(inputs, read a batch at a time; labels; logits of the float model the artifacts were lowered
    from); a dense task's maps and outputs are read a batch at a time too."""
    if report.get("task", "classification") != "classification":  # stages: the lowered model's outputs
        return open_dense(build_dir / (LOWERED_BUNDLE if report.get("stages") else "eval/bundle.npz"))
    x, labels, ref = open_bundle(build_dir / "eval" / "bundle.npz")
    if report.get("stages"):
        lowered = build_dir / LOWERED_BUNDLE
        if lowered.is_file():
            with np.load(lowered) as npz:
                return x, labels, npz["reference_logits"]
        from edgevit.models.load import load, logits_of  # an older build: recompute the lowered model's

        ref = logits_of(load(checkpoint=confined(build_dir, report["lowered"]["step"])).model, x, 64)
    return x, labels, ref


def recheck(
    build_dir: Path,
    t: dict[str, Any],
    recipe: Recipe,
    config: ModelConfig,
    data: tuple[Inputs, Inputs, Inputs],
    replacement: Path | None = None,
) -> dict[str, Any]:
    """Run one built target's artifact again on the evaluation set; its report entry, re-scored.

    With ``replacement`` (an artifact made elsewhere for this target) that file is checked instead,
    and its latency measured here when the target's device is this machine (else not measured)."""
    from edgevit.targets import TARGETS

    entry = {k: t.get(k) for k in ("name", "backend", "precision", "status", "where", "reason", "latency_ms")}
    entry["recorded_accuracy"] = t.get("accuracy")
    entry["rechecked"] = False
    if t.get("status") != "ok":
        return entry
    spec = next((s for s in recipe.targets if s.name == t["name"]), None)
    target = TARGETS.get(t["backend"])
    avail = target.availability()
    if not avail.available:
        entry["accuracy"] = t.get("accuracy")
        entry["note"] = f"not re-checked ({avail.reason}); the build's numbers"
        return entry
    device = resolve_device(spec.device if spec else None)
    threads = (spec.threads if spec else None) or device.threads or recipe.check.threads
    x, labels, ref = data
    artifact = replacement or confined(build_dir, t["artifact"])
    batch, c = recipe.check.eval_batch, recipe.check
    try:
        with target.runner(artifact, threads, config.input_size, device) as runner:
            if config.task == "classification":
                entry["accuracy"] = accuracy.compare(runner.infer_all(x, batch), labels, ref).to_dict()
            else:  # scored batch by batch, as the build does
                entry["accuracy"], _ = score_run(TASKS.get(config.task), runner.infer, x, labels, ref, batch)
            simulated = runner.simulated
            if replacement is not None:
                local = device.transport == "local" and not simulated
                lat = latency.measure(runner, x[: c.batch], c.warmup, c.runs) if local else None
                entry["latency_ms"] = lat.to_dict() if lat else None
    except NotCheckable as exc:
        return {**entry, "status": "skipped", "reason": f"not re-checked: {exc}"}
    except EdgeVitError as exc:
        return {**entry, "status": "failed", "reason": f"re-check failed: {exc}"}
    entry["rechecked"] = True
    entry["where"] = f"simulated:{simulated}" if simulated else "host"
    if replacement is not None:
        entry["artifact"] = str(replacement)
        entry["note"] = f"replaced by {replacement} (sha256 {sha256_file(replacement)[:12]}…); " + (
            "latency measured here" if entry["latency_ms"] else "latency not measured (not a host target)"
        )
    elif str(t.get("where", "")).startswith("device:"):
        entry["note"] = f"accuracy re-checked on this host; latency is the build's, measured on {t['where']}"
    return entry


def diagnose(build_dir: Path, t: dict[str, Any], x: np.ndarray) -> dict[str, Any] | None:
    """The layer-wise comparison of a target's artifact with the build's float ONNX (None if not comparable)."""
    from edgevit.check import layerwise

    given = Path(t["artifact"])
    artifact = given if given.is_absolute() else confined(build_dir, t["artifact"])
    if artifact.suffix not in layerwise.COMPARABLE_SUFFIXES:
        return None
    return layerwise.summary(confined(build_dir, "export/model.onnx"), artifact, x, t.get("backend"))


# what a baseline comparison holds each task to: a score in percent, higher is better
BASELINE_SCORE = {"classification": ("top1", 1.0), "segmentation": ("miou", 1.0), "depth": ("delta1", 100.0)}


def against_baseline(
    targets: list[dict[str, Any]],
    baseline: dict[str, Any],
    tolerance: float,
    latency_tolerance: float | None,
    task: str = "classification",
) -> list[GateResult]:
    """Regressions against a previous build's report: top-1 (mIoU; δ1 in percent) lower by more
    than ``tolerance`` points, p50 latency higher by more than ``latency_tolerance`` (a fraction),
    a target gone or broken."""
    key, scale = BASELINE_SCORE[task]
    gate = f"baseline_{key}"
    now = {t["name"]: t for t in targets}
    results = []
    for b in baseline.get("targets", []):
        if b.get("status") != "ok" or not b.get("accuracy") or key not in b["accuracy"]:
            continue
        name, t = b["name"], now.get(b["name"])
        base_top1 = float(b["accuracy"][key]) * scale
        if t is None or t["status"] != "ok" or not t.get("accuracy"):
            why = "gone from this build" if t is None else f"now {t['status']}"
            results.append(GateResult(name, gate, base_top1 - tolerance, None, False, why))
            continue
        top1 = float(t["accuracy"][key]) * scale
        note = f"baseline {base_top1:.2f}%, tolerance {tolerance:g} points"
        passed = top1 >= base_top1 - tolerance - 1e-9
        results.append(GateResult(name, gate, base_top1 - tolerance, top1, passed, note))
        base_lat, lat = (b.get("latency_ms") or {}).get("p50"), (t.get("latency_ms") or {}).get("p50")
        if latency_tolerance is not None and base_lat:
            limit = float(base_lat) * (1 + latency_tolerance)
            note = f"baseline p50 {base_lat:.3f} ms, tolerance +{latency_tolerance:.0%}"
            ok = lat is not None and lat <= limit
            results.append(GateResult(name, "baseline_latency_p50_ms", limit, lat, ok, note))
    return results


def validate(
    build_dir: Path,
    baseline: Path | None = None,
    tolerance: float = 0.5,
    latency_tolerance: float | None = None,
    replacements: dict[str, Path] | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    log: Callable[[str], None] | None = None,
) -> Validation:
    """Verify, re-check and gate a build directory (see the module docstring). ``replacements``
    maps target names to artifacts made elsewhere, checked in place of the build's own. A build
    still writing the directory is waited for (up to ``wait_s``; ``log`` hears that it waits)."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise EdgeVitError(
            f"{build_dir} is not a directory", "pass the build directory `edgevit build` wrote"
        )
    with lock_build_dir(build_dir, wait_s, log, shared=True):
        return _validate(build_dir, baseline, tolerance, latency_tolerance, replacements or {})


def _validate(
    build_dir: Path,
    baseline: Path | None,
    tolerance: float,
    latency_tolerance: float | None,
    replacements: dict[str, Path],
) -> Validation:
    started = time.time()
    report_path = build_dir / "report.json"
    built = (
        {t["name"]: t for t in json.loads(report_path.read_text())["targets"]}
        if report_path.is_file()
        else {}
    )
    for name, path in replacements.items():
        if not (built.get(name) or {}).get("artifact"):
            raise EdgeVitError(
                f"--artifact {name}=…: the build has no built target {name}",
                f"use one of: {', '.join(n for n, t in built.items() if t.get('artifact'))}",
            )
        suffix = Path(built[name]["artifact"]).suffix
        if not path.is_file() or path.suffix != suffix:
            raise EdgeVitError(
                f"--artifact {name}={path}: not a {suffix} file",
                "pass an artifact of the same backend and format as the build's",
            )
    skip = tuple(str(Path(built[n]["artifact"]).parent) + "/" for n in replacements)
    manifest = verify_files(build_dir, skip)
    report = json.loads(report_path.read_text())
    try:
        recipe = Recipe.model_validate(manifest["recipe"])
    except Exception as exc:
        raise BuildDirError(f"manifest.json holds no valid recipe ({str(exc).splitlines()[0]})") from None
    base_doc = None
    if baseline is not None:
        try:
            base_doc = json.loads(Path(baseline).read_text())
            base_doc["targets"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeVitError(f"baseline {baseline} is not an edgevit report.json ({exc})") from None
    config = ModelConfig.model_validate_json(
        (confined(build_dir, report["lowered"]["step"]) / "config.json").read_text()
    )
    data = _reference(build_dir, report)
    targets = [
        recheck(build_dir, t, recipe, config, data, replacements.get(t["name"])) for t in report["targets"]
    ]
    task = TASKS.get(config.task)
    results = gates.evaluate_stages(report.get("stages", []), recipe.gates, task)
    for t in targets:
        spec = next((s for s in recipe.targets if s.name == t["name"]), None)
        results += gates.evaluate(t, (spec.gates if spec else None) or recipe.gates, task)
    if base_doc is not None:
        results += against_baseline(targets, base_doc, tolerance, latency_tolerance, task.name)
    failing = {g.target for g in results if not g.passed}
    for t, recorded in zip(targets, report["targets"], strict=True):
        if t["name"] in failing and t["status"] == "ok" and t["precision"] == "int8":
            checked = {**recorded, "artifact": t.get("artifact", recorded["artifact"])}
            t["layerwise"] = diagnose(build_dir, checked, data[0][: recipe.check.layerwise_samples or 16])
    return Validation(
        recipe.name,
        build_dir,
        targets,
        results,
        len(manifest["files"]),
        str(baseline) if baseline else None,
        round(time.time() - started, 2),
        task=task.name,
    )
