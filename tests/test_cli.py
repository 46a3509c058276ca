import json
import subprocess
import sys

from tests.conftest import run_cli


def test_import_edgevit_loads_no_backend() -> None:
    code = (
        "import sys, edgevit; edgevit.Recipe; edgevit.load_recipe('digits-ort-int8');"
        "import edgevit.targets;"
        "bad = [m for m in ('onnxruntime', 'openvino', 'nncf', 'coremltools', 'tensorrt') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_recipes_targets_models_list() -> None:
    recipes = run_cli("recipes", "--json")
    assert recipes.returncode == 0
    assert {"digits-ort-int8", "x86-openvino-int8"} <= {r["name"] for r in json.loads(recipes.stdout)}
    targets = json.loads(run_cli("targets", "--json").stdout)
    assert {t["backend"] for t in targets} == {"onnxruntime", "openvino", "tflite", "coreml", "tensorrt"}
    assert all(t["available"] == (not t["reason"]) for t in targets)
    coreml = next(t for t in targets if t["backend"] == "coreml")
    assert not coreml["available"] or sys.platform == "darwin" or "simulation" in coreml["note"]
    models = json.loads(run_cli("models", "--json").stdout)
    assert "vit_plus_base_patch16_224" in models


def test_user_errors_are_one_line_exit_2(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "build")
    cases = [
        ("build", "no-such-recipe", "-o", out),
        ("build", "digits-ort-int8", "-o", out, "--set", "stages.0.method=bogus"),
        ("build", "digits-ort-int8", "-o", out, "--set", "model.checkpoint=/does/not/exist.safetensors"),
        ("build", "digits-ort-int8", "-o", out, "--set", "model.name=vit_plus_nonexistent"),
        ("build", "digits-ort-int8", "-o", out, "--set", f"data.evaluation={{source: {tmp_path / 'empty'}}}"),
        ("train", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "out")),
        ("train", "--epochs", "0", "-o", str(tmp_path / "out")),
    ]
    for args in cases:
        proc = run_cli(*args, "--quiet")
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgevit: error: "), (args, proc.stderr)


def test_bad_compression_settings_are_one_line_errors(tmp_path, tiny_checkpoint) -> None:
    out = str(tmp_path / "build")
    base = ("build", "digits-pruned-int8", "-o", out, "--set", f"model.checkpoint={tiny_checkpoint}")
    cases = [
        (
            (*base, "--set", "stages.0.remove_heads=3"),
            "stages[0].remove_heads: cannot remove 3 heads per block",
        ),
        (
            (*base, "--set", "stages.0.remove_blocks=1"),
            "stages[0].remove_blocks: cannot remove 1 of 1 blocks",
        ),
        ((*base, "--set", "stages.0.target.macs=1"), "stages[0].target.macs: must be less than 1, got 1"),
        ((*base, "--set", "stages.0.importance=random"), "stages[0].importance: Input should be 'taylor' or"),
        (
            ("distill", "--teacher", str(tiny_checkpoint), "--student", "vit_plus_nope", "-o", out),
            "unknown model name 'vit_plus_nope'",
        ),
        (("distill", "--teacher", str(tiny_checkpoint), "-o", out), "distill needs --teacher and --student"),
    ]
    for args, message in cases:
        proc = run_cli(*args, "--quiet")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert not (tmp_path / "build" / "stages").exists() or not any((tmp_path / "build" / "stages").iterdir())


def _one_line_exit_2(capsys, *args: str) -> str:  # type: ignore[no-untyped-def]
    """Run the CLI in this process (as `edgevit ARGS --quiet`); assert exit 2 and one stderr line.
    A traceback would surface as the exception itself and fail the test."""
    from edgevit.cli import main

    capsys.readouterr()
    code = main([*args, "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("edgevit: error: "), (args, err)
    return str(lines[0])


def test_output_paths_that_cannot_be_written_are_one_line_errors(tmp_path, tiny_checkpoint, capsys) -> None:
    file = tmp_path / "a-file"
    file.write_text("keep me\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (("build", "digits-ort-int8", "-o", str(file)), "-o"),
        (("build", "digits-ort-int8", "-o", str(file / "below")), "-o"),
        (("train", "-o", str(file)), "-o"),
        (
            (
                "distill",
                "--teacher",
                str(tiny_checkpoint),
                "--student",
                str(tiny_checkpoint),
                "-o",
                str(file),
            ),
            "-o",
        ),
        (("profile", str(tiny_checkpoint), "--device", "local", "-o", str(folder)), "-o"),
        (("validate", str(folder), "--junit", str(folder)), "--junit"),
        (("validate", str(folder), "--markdown", str(file / "summary.md")), "--markdown"),
    ]
    for args, flag in cases:
        line = _one_line_exit_2(capsys, *args)
        assert f"{flag} " in line, (args, line)
    assert file.read_text() == "keep me\n" and not any(folder.iterdir())


def test_bad_train_and_distill_options_name_the_option_and_rule(tmp_path, tiny_checkpoint, capsys) -> None:
    out = str(tmp_path / "out")
    distill = ("distill", "--teacher", str(tiny_checkpoint), "--student", str(tiny_checkpoint), "-o", out)
    config = tmp_path / "distill.json"
    settings = {"stage": "distill", "epochs": -3}
    config.write_text(
        json.dumps({"teacher": "t", "student": "s", "data": {"source": "digits"}, "settings": settings})
    )
    cases = [
        (("train", "--epochs", "-1", "-o", out), "--epochs: must be at least 1, got -1"),
        (("train", "--batch-size", "0", "-o", out), "--batch-size: must be at least 1, got 0"),
        (("train", "--lr", "0", "-o", out), "--lr: must be greater than 0, got 0.0"),
        ((*distill, "--epochs", "0"), "--epochs: must be at least 1, got 0"),
        ((*distill, "--alpha", "1.5"), "--alpha: must be at most 1, got 1.5"),
        ((*distill, "--temperature", "-2"), "--temperature: must be greater than 0, got -2.0"),
        ((*distill, "--nproc", "0"), "--nproc: must be at least 1, got 0"),
        (("distill", "--config", str(config), "-o", out), "settings.epochs: must be at least 1, got -3"),
        (("qat", "-o", out), "qat needs --model (or --config)"),
        (
            ("qat", "--model", str(tiny_checkpoint), "--freeze-ranges", "1", "-o", out),
            "--freeze-ranges: must be less than 1",
        ),
        (("qat", "--model", str(tiny_checkpoint), "--lr", "0", "-o", out), "--lr: must be greater than 0"),
    ]
    for args, message in cases:
        line = _one_line_exit_2(capsys, *args)
        assert message in line, (args, line)
    assert not (tmp_path / "out").exists()


class _Pickled:
    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


def test_a_refused_pickled_checkpoint_is_one_line(tmp_path, capsys) -> None:
    import torch

    path = tmp_path / "objects.pth"
    torch.save({"model": _Pickled()}, path)
    args = ("train", "--init", str(path), "--epochs", "1", "-o", str(tmp_path / "out"))
    line = _one_line_exit_2(capsys, *args)
    assert "not loaded for safety" in line and "_Pickled" in line, line


def test_qat_command_trains_against_a_backends_grid(tmp_path, tiny_checkpoint, capsys) -> None:
    from edgevit.cli import main

    out = tmp_path / "qat"
    args = ["qat", "--model", str(tiny_checkpoint), "--backend", "tensorrt", "--matmul-scope", "all"]
    args += [
        "--calibration-count",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "-o",
        str(out),
        "--json",
        "--quiet",
    ]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["simulated_sqnr_db"]["where"].startswith("simulated:edgevit.quant (tensorrt-w8)")
    assert {"model.safetensors", "config.json", "model.onnx", "qat.json", "ranges.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "train_state.pt").exists()  # finished: no resume state left


def test_train_task_depth_on_a_dense_folder(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from edgevit.cli import main
    from edgevit.data.scenes import write_dense_folder

    write_dense_folder(tmp_path / "scenes", 20)
    out = tmp_path / "depth"
    args = [
        "train",
        "--task",
        "depth",
        "--head",
        "linear",
        "--data",
        str(tmp_path / "scenes"),
        "--epochs",
        "1",
    ]
    code = main([*args, "--batch-size", "8", "-o", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "(depth)" in printed and "val delta1" in printed and "test absrel" in printed
    assert json.loads((out / "config.json").read_text())["model_kwargs"] == {
        "task": "depth",
        "dense_head": "linear",
    }
    line = _one_line_exit_2(capsys, "train", "--head", "mlp", "-o", str(tmp_path / "x"))
    assert "--head is for dense tasks" in line
