"""Command line: a thin layer over the API. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgevit import __version__
from edgevit.agent import RUNTIMES
from edgevit.errors import EdgeVitError
from edgevit.fileio import check_output_file, ensure_dir
from edgevit.workspace import DEFAULT_WAIT_S


def _log(quiet: bool):  # type: ignore[no-untyped-def]
    def log(line: str) -> None:
        if not quiet:
            print(f"edgevit: {line}", file=sys.stderr, flush=True)

    return log


def cmd_build(args: argparse.Namespace) -> int:
    from edgevit.pipeline import build
    from edgevit.recipe.loader import load_recipe

    recipe = load_recipe(args.recipe, args.set or [])
    out = ensure_dir(Path(args.output) if args.output else Path("build") / recipe.name, "-o")
    quiet = args.quiet or args.json
    report = build(recipe, out, log=_log(quiet), progress=not quiet and sys.stderr.isatty(), wait_s=args.wait)
    if args.json:
        print(json.dumps(report.data, indent=2))
    elif not args.quiet:
        print((out / "report.md").read_text())
        print(f"report: {out / 'report.json'}")
    return 0 if report.passed else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from edgevit.check.validate import validate
    from edgevit.fileio import atomic_write_text

    for flag, path in (("--junit", args.junit), ("--markdown", args.markdown)):
        if path:  # checked first: the re-check can take minutes
            check_output_file(Path(path), flag)
    replacements = {}
    for item in args.artifact or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EdgeVitError(
                f"--artifact {item!r} is not TARGET=PATH", "e.g. --artifact ort-int8=model.onnx"
            )
        replacements[name] = Path(path)
    result = validate(
        Path(args.build_dir),
        baseline=Path(args.baseline) if args.baseline else None,
        tolerance=args.tolerance,
        latency_tolerance=args.latency_tolerance,
        replacements=replacements,
        wait_s=args.wait,
        log=_log(False),
    )
    if args.junit:  # written whatever the outcome: CI reads it to show what failed
        atomic_write_text(Path(args.junit), result.junit())
    if args.markdown:
        atomic_write_text(Path(args.markdown), result.markdown())
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(result.markdown())
    return 0 if result.passed else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from edgevit.check.layerwise import COMPARABLE_SUFFIXES
    from edgevit.check.validate import diagnose, verify_files

    build_dir = Path(args.build_dir)
    verify_files(build_dir)
    report = json.loads((build_dir / "report.json").read_text())
    chosen = [
        t
        for t in report["targets"]
        if t.get("artifact") and (t["name"] in args.target if args.target else t.get("precision") == "int8")
    ]
    unknown = sorted(set(args.target or []) - {t["name"] for t in chosen})
    if unknown:
        raise EdgeVitError(
            f"no built target {', '.join(unknown)} in {build_dir}",
            f"use one of: {', '.join(t['name'] for t in report['targets'] if t.get('artifact'))}",
        )
    chosen = [t for t in chosen if Path(t["artifact"]).suffix in COMPARABLE_SUFFIXES]
    if not chosen:
        raise EdgeVitError(
            f"{build_dir} has no ONNX or OpenVINO INT8 artifact to compare",
            "build an int8 onnxruntime, openvino or tensorrt target (or name one with --target)",
        )
    from edgevit.check.bundle import open_bundle

    inputs, _, _ = open_bundle(build_dir / "eval" / "bundle.npz")
    x = inputs[: args.samples]
    inputs.close()
    doc = {t["name"]: diagnose(build_dir, t, x) for t in chosen}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for name, found in doc.items():
        assert found is not None
        layers = found["layers"][: args.top]
        print(f"{name}: {len(found['layers'])} layers on {found['samples']} images, quantized worst first")
        print(f"  {'layer':<28} {'op':<7} {'int8':<5} {'alone SQNR':>11} {'in-model SQNR':>14} {'cosine':>8}")
        for e in layers:
            print(
                f"  {e['layer']:<28} {e['op']:<7} {'yes' if e['quantized'] else 'no':<5} "
                f"{e['local_sqnr_db']:>8.1f} dB {e['sqnr_out']:>11.1f} dB {e['cosine_out']:>8.5f}"
            )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from edgevit.fileio import atomic_write_json
    from edgevit.profiling import profile

    if args.output:  # checked first: profiling can take minutes
        check_output_file(Path(args.output), "-o")
    result = profile(
        Path(args.target),
        args.device,
        runs=args.runs,
        threads=args.threads,
        warmup=args.warmup,
        duration_s=args.duration,
        batch=args.batch,
        bundle=Path(args.bundle) if args.bundle else None,
        timeout_s=args.timeout,
        runtime=args.runtime,
    )
    doc = result.to_dict()
    if args.output:  # written only once every artifact was profiled
        atomic_write_json(Path(args.output), doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif not args.quiet:
        for r in doc["results"]:
            lat, acc = r["latency_ms"], r.get("accuracy")
            extra = f", top-1 {acc['top1']:.2f}%, agreement {acc['agreement']:.4f}" if acc else ""
            shown = [f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99") if lat.get(k) is not None]
            if lat.get("p50") is None:  # e.g. an older benchmark_model: no median printed
                shown = ["p50 not reported", f"mean {lat['mean']:.3f}", *shown]
            print(
                f"{r['target']} on {r['where']} ({r['runtime']}): {', '.join(shown)} ms ({lat['runs']} runs, "
                f"{lat['threads']} threads, batch {lat['batch']}), peak memory {r['peak_rss_mb']} MB{extra}"
            )
            dev = r.get("device") or {}
            if dev.get("system") == "Android":
                print(
                    f"  {dev.get('manufacturer')} {dev.get('model')} ({dev.get('soc') or dev.get('platform')}), "
                    f"Android {dev.get('android')}, {dev.get('abi')}; battery {dev.get('battery_c')} °C; "
                    f"thermal {dev.get('thermal_c')} -> {dev.get('thermal_c_after')} °C"
                )
            if r.get("accuracy_note"):
                print(f"  accuracy: {r['accuracy_note']}")
            trt = r.get("session") if r["runtime"] == "tensorrt" else None
            if trt:
                counts = ", ".join(f"{n} {p}" for p, n in trt["layer_precisions"]["counts"].items())
                built = f" in {trt['build_s']} s" if trt["engine"] == "built" else ""
                print(
                    f"  TensorRT {r['versions'].get('tensorrt')} on {trt['gpu']}: engine {trt['engine']}{built}; "
                    f"layers {counts}"
                )
    return 0


# Option flags whose names differ from the config fields they set.
_FLAGS = {
    "init_checkpoint": "--init",
    "source": "--data",
    "distill_token": "--distill-token",
    "activation_checkpointing": "--activation-checkpointing",
}


def _options_error(exc: ValidationError, command: str) -> EdgeVitError:
    """One line naming each bad option and its rule (``--epochs: must be at least 1, got -1``)."""
    from edgevit.recipe.loader import describe_rule

    lines = []
    for err in exc.errors():
        field = next((p for p in reversed(err["loc"]) if isinstance(p, str)), command)
        lines.append(f"{_FLAGS.get(field, '--' + field.replace('_', '-'))}: {describe_rule(err)}")
    return EdgeVitError("; ".join(lines), f"see `edgevit {command} -h`")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (argparse leaves the others None)."""
    return {k: v for k, v in options.items() if v is not None}


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _relaunch(args: argparse.Namespace) -> bool:
    """Re-run this command as ``--nproc`` processes under torchrun; False when already one of them."""
    from edgevit import distributed

    if args.nproc is not None and args.nproc < 1:
        raise EdgeVitError(
            f"--nproc: must be at least 1, got {args.nproc}", f"see `edgevit {args.command} -h`"
        )
    if args.nproc is None or args.nproc == 1 or distributed.launched():
        return False
    distributed.run_under_torchrun(["edgevit.cli", *_without_nproc(args.argv)], args.nproc)
    return True


def _check_compute(settings: Any) -> None:
    """Fail on a --device this machine lacks before torchrun starts (one line, not one per process)."""
    from edgevit.compute import resolve

    resolve(settings.device, settings.precision)


def _main_process() -> bool:
    from edgevit import distributed

    return distributed.init().main


# what ``edgevit train --task`` trains when --data / --model / --head are not given
TASK_DEFAULTS: dict[str, dict[str, str]] = {
    "segmentation": {"data": "shapes-seg", "model": "vit_plus_tiny_patch4_32", "head": "dpt"},
    "depth": {"data": "shapes-depth", "model": "vit_plus_tiny_patch4_32", "head": "dpt"},
    "detection": {"data": "shapes-det", "model": "vit_plus_tiny_patch4_32", "head": "dense"},
}
# per task: the model argument --head sets, and the heads it takes
TASK_HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segmentation": ("dense_head", ("linear", "mlp", "dpt")),
    "depth": ("dense_head", ("linear", "mlp", "dpt")),
    "detection": ("det_head", ("dense",)),
}


def _trained_name(cfg: Any) -> str:
    """What ``edgevit train`` trained, for its last line: the model name, or the checkpoint's."""
    if "model" in cfg.model_fields_set or not cfg.init_checkpoint:
        return str(cfg.model)
    probe = "a linear probe on " if cfg.linear_probe else ""
    return f"{probe}{Path(cfg.init_checkpoint).name}"


def _init_checkpoint(init: str | None) -> str | None:
    """``--init`` as a path: a builtin model is made (trained or mapped) once, here."""
    if init is None or not init.startswith("builtin:"):
        return init
    from edgevit.builtin import resolve_builtin

    return str(resolve_builtin(init.removeprefix("builtin:")))


def cmd_train(args: argparse.Namespace) -> int:
    from edgevit.compute import resolve
    from edgevit.train import TrainConfig, train

    dense = TASK_DEFAULTS.get(args.task, {})
    if args.head and not dense:
        raise EdgeVitError("--head is for dense tasks", "add --task segmentation, depth or detection")
    argument, heads = TASK_HEADS.get(args.task, ("", ()))
    if args.head and args.head not in heads:
        raise EdgeVitError(f"--head {args.head} is not a {args.task} head", f"use {' or '.join(heads)}")
    fields = _given(
        model=args.model or dense.get("model"),
        data=args.data or dense.get("data"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        init_checkpoint=_init_checkpoint(args.init),
        linear_probe=args.linear_probe or None,
        model_kwargs={"task": args.task, argument: args.head or dense["head"]} if dense else None,
    )
    try:
        cfg = TrainConfig(**fields)
    except ValidationError as exc:
        raise _options_error(exc, "train") from None
    compute = resolve(args.device or "auto", args.precision or "auto")  # in each process: its LOCAL_RANK
    ensure_dir(Path(args.output), "-o")
    if _relaunch(args):  # after the options are checked: one error line, not one per process
        return 0
    result = train(cfg, Path(args.output), progress=not args.quiet, compute=compute)
    if not _main_process():
        return 0
    summary = {k: v for k, v in result.items() if k.startswith(("val_", "test_")) or k == "seconds_this_run"}
    scores = ", ".join(
        f"{k.replace('_', ' ')} {'n/a' if v is None else round(v, 4 if abs(v) < 1 else 2)}"
        for k, v in summary.items()
        if k != "seconds_this_run"
    )
    print(
        json.dumps({"output": args.output, **summary})
        if args.json
        else f"trained {_trained_name(cfg)} ({args.task}) on {cfg.data}: {scores} -> {args.output}"
    )
    return 0


def _read_config(path: Path, kind: type[Any], command: str) -> Any:
    """A stage's JSON config file (what a build hands to torchrun's processes), validated."""
    from edgevit.recipe.loader import format_validation_error

    try:
        text = path.read_text()
        return kind.model_validate_json(text)
    except OSError as exc:
        raise EdgeVitError(f"{command} config {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        try:
            doc = json.loads(text)
        except ValueError as bad:
            raise EdgeVitError(f"{command} config {path} is not valid JSON ({bad})") from None
        raise EdgeVitError(f"{command} config {path}: {format_validation_error(exc, doc)}") from None


def cmd_qat(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import numpy as np

    from edgevit.data import DataSpec, load_data
    from edgevit.data.transforms import preprocess
    from edgevit.devices import resolve_device
    from edgevit.models.load import load
    from edgevit.recipe.schema import QatStage, QuantizeStage
    from edgevit.stages.qat import QatConfig, qat
    from edgevit.targets import TARGETS, LowerRequest

    out = Path(args.output)
    if args.config:
        cfg = _read_config(Path(args.config), QatConfig, "qat")
    else:
        if not args.model:
            raise EdgeVitError("qat needs --model (or --config)", "see `edgevit qat -h`")
        fields = _given(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            temperature=args.temperature,
            alpha=args.alpha,
            freeze_ranges=args.freeze_ranges,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
        )
        try:
            settings = QatStage(stage="qat", nproc=1 if args.nproc is None else args.nproc, **fields)
            stage = QuantizeStage(
                stage="quantize", matmul_scope=args.matmul_scope, patch_embed=args.patch_embed
            )
        except ValidationError as exc:
            raise _options_error(exc, "qat") from None
        _check_compute(settings)
        loaded = load(checkpoint=Path(args.model))
        ensure_dir(out, "-o")
        calibration_file = out / "calibration.npy"
        if not calibration_file.is_file():  # a resumed run keeps the images it started with
            from edgevit.fileio import atomic_path

            calib = load_data(
                DataSpec(source=args.calibration or args.data, split="train", count=args.calibration_count),
                loaded.config.class_names,
            )
            with atomic_path(calibration_file) as tmp, open(tmp, "wb") as f:
                np.save(f, preprocess(calib, loaded.config))
        target = TARGETS.get(args.backend)
        request = LowerRequest(
            Path(args.model) / "model.onnx",
            "int8",
            loaded.config,
            {},
            stage,
            None,
            checkpoint=Path(args.model),
            device=resolve_device(None),
        )
        scheme = target.int8_scheme(request)
        if scheme is None:
            raise EdgeVitError(
                f"--backend {args.backend} has no INT8 grid to train against", "pick another backend"
            )
        cfg = QatConfig(
            model=str(Path(args.model).resolve()),
            scheme=asdict(scheme),
            patch_embed=args.patch_embed,
            matmuls=args.matmul_scope == "all",
            calibration=str(calibration_file.resolve()),
            data=DataSpec(source=args.data, split="train"),
            settings=settings,
        )
        if _relaunch(args):
            return 0
    result = qat(cfg, out, progress=not args.quiet)
    if not _main_process() or (args.quiet and not args.json):
        return 0
    sim = result["simulated_sqnr_db"]
    print(
        json.dumps({"output": args.output, "simulated_sqnr_db": sim, "processes": result["processes"]})
        if args.json
        else f"qat against {Path(cfg.model).name} on the {cfg.scheme['backend']} grid: simulated INT8 logit "
        f"SQNR {sim['before']} -> {sim['after']} dB ({result['processes']} process(es)) -> {args.output}"
    )
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgevit.data import DataSpec
    from edgevit.recipe.schema import DistillStage
    from edgevit.stages.distill import DistillConfig, distill

    if args.config:
        cfg = _read_config(Path(args.config), DistillConfig, "distill")
    else:
        if not (args.teacher and args.student):
            raise EdgeVitError(
                "distill needs --teacher and --student (or --config)", "see `edgevit distill -h`"
            )
        fields = _given(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            temperature=args.temperature,
            alpha=args.alpha,
            seed=args.seed,
            distill_token=args.distill_token or None,
            activation_checkpointing=args.activation_checkpointing or None,
            device=args.device,
            precision=args.precision,
        )
        try:
            cfg = DistillConfig(
                teacher=args.teacher,
                student=args.student,
                data=DataSpec(source=args.data, split="train"),
                settings=DistillStage(
                    stage="distill", nproc=1 if args.nproc is None else args.nproc, **fields
                ),
            )
        except ValidationError as exc:
            raise _options_error(exc, "distill") from None
        _check_compute(cfg.settings)
        ensure_dir(Path(args.output), "-o")
        if _relaunch(args):
            return 0
    result = distill(cfg, Path(args.output), progress=not args.quiet)
    if not _main_process() or (args.quiet and not args.json):
        return 0
    last = result["history"][-1] if result["history"] else {}
    print(
        json.dumps({"output": args.output, "loss": last.get("loss"), "processes": result["processes"]})
        if args.json
        else f"distilled {cfg.teacher} -> {cfg.student} ({result['processes']} process(es), "
        f"final loss {last.get('loss', float('nan')):.4f}) -> {args.output}"
    )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from edgevit.recipe.loader import builtin_recipes

    rows = []
    for name, path in builtin_recipes().items():
        try:
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(invalid YAML)"
        rows.append(
            {
                "name": name,
                "description": str(desc).strip().splitlines()[0] if desc else "",
                "path": str(path),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from edgevit.targets import TARGETS

    rows: list[dict[str, Any]] = []
    for name in TARGETS.names():
        target = TARGETS.get(name)
        avail = target.availability()
        rows.append(
            {
                "backend": name,
                "available": avail.available,
                "precisions": list(target.precisions),
                "versions": avail.versions,
                "reason": avail.reason,
                "note": avail.note,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = (
                "available "
                + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
                + (f" ({r['note']})" if r["note"] else "")
                if r["available"]
                else f"unavailable: {r['reason']}"
            )
            print(f"{r['backend']:<12} {'[' + '/'.join(r['precisions']) + ']':<17} {state}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import timm

    import edgevit.models.vit_plus  # noqa: F401

    names = timm.list_models("vit_plus_*")
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(prog="edgevit", description=__doc__)
    p.add_argument("--version", action="version", version=f"edgevit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build, check and report a recipe")
    b.add_argument("recipe", help="built-in recipe name (see `edgevit recipes`) or path to a .yaml")
    b.add_argument("-o", "--output", help="build directory (default: build/<recipe name>)")
    b.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"wait this long for another build into the same directory (default {DEFAULT_WAIT_S:g}; 0: fail at once)",
    )
    b.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set gates.max_top1_drop=0.5 (repeatable)",
    )
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("train", help="train or fine-tune a model; writes model.safetensors + config.json")
    t.add_argument("--model", help="ViT-Plus or timm model name (default vit_plus_tiny_patch8_32)")
    t.add_argument(
        "--task",
        choices=("classification", *TASK_DEFAULTS),
        default="classification",
        help="what the model predicts (dense tasks: a dense head on ViT-Plus, default data shapes-seg / shapes-depth)",
    )
    t.add_argument(
        "--head",
        choices=sorted({h for _, heads in TASK_HEADS.values() for h in heads}),
        help="dense head (linear, mlp, dpt; default dpt) or detection head (dense)",
    )
    t.add_argument(
        "--data",
        help="'digits', 'shapes', 'shapes-seg', 'shapes-depth', 'shapes-det', an ImageFolder, a dense "
        "folder or a COCO folder (default digits)",
    )
    t.add_argument(
        "--init",
        help="checkpoint to fine-tune from, or builtin:<name> (classifier resized to the data's classes)",
    )
    t.add_argument(
        "--linear-probe",
        action="store_true",
        help="train only a new classifier on --init's frozen features (e.g. a headless backbone)",
    )
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("-o", "--output", required=True, help="output directory (re-run to resume)")
    t.add_argument("--nproc", type=int, help="train with N processes (torchrun + DistributedDataParallel)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser(
        "distill", help="distill a teacher checkpoint into a student (pruned checkpoint or model name)"
    )
    d.add_argument("--teacher", help="teacher checkpoint (directory with model.safetensors + config.json)")
    d.add_argument("--student", help="student checkpoint, or a ViT-Plus name to train from scratch")
    d.add_argument("--data", default="digits", help="'digits' or an ImageFolder directory (its train split)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--batch-size", type=int)
    d.add_argument("--lr", type=float)
    d.add_argument("--temperature", type=float)
    d.add_argument("--alpha", type=float, help="weight of the soft (teacher) loss; 1 - alpha goes to labels")
    d.add_argument("--seed", type=int)
    d.add_argument("--distill-token", action="store_true", help="add a DeiT-style distillation token")
    d.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute block activations in the backward pass: less memory at a large batch, more compute",
    )
    d.add_argument("--config", help="a DistillConfig JSON file instead of the options above")
    d.add_argument("--nproc", type=int, help="distill with N processes (torchrun + DistributedDataParallel)")
    d.add_argument("-o", "--output", required=True, help="output directory (re-run to resume)")
    d.set_defaults(func=cmd_distill)

    qa = sub.add_parser(
        "qat",
        help="quantization-aware distillation of a checkpoint against one backend's simulated INT8 grid",
    )
    qa.add_argument("--model", help="float checkpoint to start from (also the teacher)")
    qa.add_argument("--backend", default="onnxruntime", help="whose INT8 grid to train against")
    qa.add_argument("--data", default="digits", help="training images: 'digits', 'shapes' or an ImageFolder")
    qa.add_argument("--calibration", help="calibration images (default: --data), train split")
    qa.add_argument("--calibration-count", type=int, default=256)
    qa.add_argument("--matmul-scope", choices=["weights", "all"], default="weights")
    qa.add_argument("--patch-embed", action="store_true", help="quantize the patch-embedding Conv too")
    qa.add_argument("--epochs", type=int)
    qa.add_argument("--batch-size", type=int)
    qa.add_argument("--lr", type=float)
    qa.add_argument("--temperature", type=float)
    qa.add_argument("--alpha", type=float, help="weight of the soft (teacher) loss; 1 - alpha goes to labels")
    qa.add_argument("--freeze-ranges", type=float, help="fraction of epochs, at the end, with ranges frozen")
    qa.add_argument("--seed", type=int)
    qa.add_argument("--config", help="a QatConfig JSON file instead of the options above")
    qa.add_argument("--nproc", type=int, help="train with N processes (torchrun + DistributedDataParallel)")
    qa.add_argument("-o", "--output", required=True, help="output directory (re-run to resume)")
    qa.set_defaults(func=cmd_qat)
    for trainer in (t, d, qa):
        trainer.add_argument(
            "--device", help="auto (default: a GPU when torch sees one), cpu, cuda or cuda:N"
        )
        trainer.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16", "fp16"],
            help="auto (default): bf16 autocast on a GPU with bf16, fp16 on one without, fp32 on the CPU",
        )

    v = sub.add_parser(
        "validate", help="re-check a build's artifacts against its float reference and gates (for CI)"
    )
    v.add_argument("build_dir", help="a directory `edgevit build` wrote")
    v.add_argument(
        "--baseline", help="a previous build's report.json: fail on a regression beyond the tolerance"
    )
    v.add_argument(
        "--tolerance", type=float, default=0.5, help="top-1 points a target may lose vs the baseline"
    )
    v.add_argument(
        "--latency-tolerance",
        type=float,
        help="fraction p50 may grow vs the baseline (e.g. 0.2); off by default",
    )
    v.add_argument(
        "--artifact",
        action="append",
        metavar="TARGET=PATH",
        help="check this artifact (made elsewhere) in place of the build's for TARGET; repeatable",
    )
    v.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"wait this long for a build still writing the directory (default {DEFAULT_WAIT_S:g})",
    )
    v.add_argument("--junit", help="write JUnit XML here (one test case per target and gate)")
    v.add_argument("--markdown", help="write a Markdown summary here (for a pull-request comment)")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser(
        "compare", help="layer-wise error of a build's INT8 ONNX/OpenVINO artifacts against its float model"
    )
    c.add_argument("build_dir", help="a directory `edgevit build` wrote")
    c.add_argument(
        "--target", action="append", help="a target to compare (repeatable; default: every int8 one)"
    )
    c.add_argument("--samples", type=int, default=16, help="evaluation images to run (default 16)")
    c.add_argument("--top", type=int, default=10, help="layers to print (default 10)")
    c.set_defaults(func=cmd_compare)

    pr = sub.add_parser(
        "profile", help="measure latency (and accuracy) of an artifact or a build's artifacts on a device"
    )
    pr.add_argument("target", help="an artifact (.onnx, .xml, .tflite) or a build directory")
    pr.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="default: a build's backends; a file's type (.onnx with build_engine.json beside it: tensorrt)",
    )
    pr.add_argument(
        "--device",
        required=True,
        help="local, ssh://user@host[:port], adb://SERIAL (an Android phone), or a profile in targets/ "
        "(e.g. x86-avx512, pixel-8)",
    )
    pr.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    pr.add_argument("--duration", type=float, help="seconds of timed runs instead of --runs")
    pr.add_argument("--warmup", type=int, default=10)
    pr.add_argument("--threads", type=int, help="default: the device profile's, else 1")
    pr.add_argument("--batch", type=int, default=1)
    pr.add_argument("--bundle", help="evaluation bundle .npz (a build directory brings its own)")
    pr.add_argument("--timeout", type=float, default=1800.0, help="seconds per artifact before giving up")
    pr.add_argument("-o", "--output", help="write the JSON document here (only when every profile succeeded)")
    pr.set_defaults(func=cmd_profile)

    sub.add_parser("recipes", help="list built-in recipes").set_defaults(func=cmd_recipes)
    sub.add_parser("targets", help="list backends: available here or not, versions, why not").set_defaults(
        func=cmd_targets
    )
    sub.add_parser("models", help="list ViT-Plus model names").set_defaults(func=cmd_models)
    for sp in sub.choices.values():
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgevit`` console script."""
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except EdgeVitError as exc:  # one line, whatever a library put into the message
        print(f"edgevit: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgevit: interrupted; finished steps are kept and reused on the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
