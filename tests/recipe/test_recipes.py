from pathlib import Path

import pytest
import yaml

from edgevit.errors import RecipeError
from edgevit.recipe import builtin_recipes, load_recipe
from edgevit.recipe.loader import apply_override

BASE = {
    "name": "t",
    "model": {"checkpoint": "builtin:digits"},
    "data": {"calibration": "digits-train-256", "evaluation": "digits-test"},
    "stages": [{"stage": "quantize"}],
    "targets": [{"name": "a", "backend": "onnxruntime", "precision": "int8"}],
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_shipped_recipe_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.description


def test_shipped_default_recipes_exist() -> None:
    assert {"digits-ort-int8", "x86-openvino-int8", "android-tflite-int8", "ios-coreml-int8"} <= set(
        builtin_recipes()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["stages"][0].update(method="bogus"),
            r"stages\[0\]\.method: Input should be .*got 'bogus'",
        ),
        (lambda d: d["targets"][0].update(colour="red"), r"targets\[0\]\.colour: unknown key"),
        (
            lambda d: d.update(gates={"max_top1_drop": -1}),
            r"gates\.max_top1_drop: must be at least 0, got -1",
        ),
        (lambda d: d["targets"][0].update(threads="many"), r"targets\[0\]\.threads: .*integer.*got 'many'"),
        (lambda d: d.update(stages=[]), r"int8 targets need a `quantize` stage"),
        (lambda d: d["targets"].append(dict(d["targets"][0])), r"target names must be unique; repeated: a"),
        (lambda d: d["targets"][0].update(backend="tpu"), r"unknown backend 'tpu'.*onnxruntime, openvino"),
        (lambda d: d["data"].update(calibration="nope"), r"data manifest 'nope' not found"),
        (lambda d: d.pop("targets"), r"targets: Field required"),
        (lambda d: d["targets"][0].update(device="pdp-11"), r"device profile 'pdp-11' not found.*x86-avx512"),
        (
            lambda d: d["stages"].insert(0, {"stage": "prune", "target": {"macs": 1.5}}),
            r"stages\[0\]\.target\.macs: .*less than 1",
        ),
        (
            lambda d: d["stages"].insert(
                0, {"stage": "prune", "target": {"macs": 0.5}, "importance": "vibes"}
            ),
            r"stages\[0\]\.importance: .*'taylor' or 'magnitude'.*got 'vibes'",
        ),
        (
            lambda d: d["stages"].insert(0, {"stage": "prune", "target": {"macs": 0.5, "params": 0.5}}),
            r"set exactly one of macs or params",
        ),
        (
            lambda d: d["stages"].append({"stage": "prune", "target": {"macs": 0.5}}),
            r"stages are out of order \(quantize, prune\): the order is prune, distill, qat, quantize",
        ),
        (
            lambda d: d["stages"].insert(0, {"stage": "qat"}),
            r"a qat stage needs training images: set data.train",
        ),
        (
            lambda d: (d["data"].update(train="digits-train"), d["stages"].append({"stage": "qat"})),
            r"stages are out of order \(quantize, qat\)",
        ),
        (
            lambda d: (
                d["data"].update(train="digits-train"),
                d["stages"].insert(0, {"stage": "qat"}),
                d["targets"][0].update(precision="fp32"),
            ),
            r"a qat stage trains for INT8 targets",
        ),
        (
            lambda d: d["stages"][0].update(accuracy_budget={"min_sqnr_db": 30, "recover": "qat"}),
            r"accuracy_budget.recover trains with qat, which needs training images: set data.train",
        ),
        (
            lambda d: d["stages"][0].update(accuracy_budget={"min_sqnr_db": 30, "recover": "retrain"}),
            r"stages\[0\]\.accuracy_budget\.recover: .*'float', 'qat' or 'qat_then_float'",
        ),
        (
            lambda d: d["stages"].insert(0, {"stage": "qat", "freeze_ranges": 1.0}),
            r"stages\[0\]\.freeze_ranges: .*less than 1",
        ),
        (
            lambda d: d["stages"].insert(0, {"stage": "distill", "student": "vit_plus_tiny_patch8_32"}),
            r"a distill stage needs training images: set data.train",
        ),
        (
            lambda d: (d["data"].update(train="digits-train"), d["stages"].insert(0, {"stage": "distill"})),
            r"distill needs a student: put a prune stage before it or set student",
        ),
        (
            lambda d: d["stages"].insert(0, {"stage": "distill", "nproc": 0}),
            r"stages\[0\]\.nproc: must be at least 1, got 0",
        ),
        (
            lambda d: d["targets"][0].update(backend="tflite", options={"mode": "bogus"}),
            r"targets\[0\]\.options: mode: Input should be 'static', 'dynamic', 'weight_only' or 'full'",
        ),
        (
            lambda d: d["targets"][0].update(backend="tflite", options={"speed": 1}),
            r"targets\[0\]\.options: speed: unknown option \(valid: mode\)",
        ),
        (
            lambda d: d["targets"][0].update(backend="tflite", precision="fp16", options={"mode": "dynamic"}),
            r"targets\[0\]\.options: mode chooses the INT8 scheme; remove it for fp16",
        ),
        (
            lambda d: d["targets"][0].update(options={"mode": "static"}),
            r"targets\[0\]\.options: mode: unknown option "
            r"\(valid: reduce_range, input_ranges, activation_scale_factors, unsigned_weights\)",
        ),
        (
            lambda d: d["targets"][0].update(
                precision="fp32", options={"activation_scale_factors": {"head": 2.0}}
            ),
            r"targets\[0\]\.options: .*activation_scale_factors is for int8 onnxruntime targets, not fp32",
        ),
        (
            lambda d: d["targets"][0].update(device="pixel-8"),
            r"targets\[0\]: device pixel-8 runs tflite, not onnxruntime",
        ),
        (
            lambda d: d["targets"][0].update(
                backend="coreml", precision="int8", options={"mode": "int4_block"}
            ),
            r"targets\[0\]\.options: mode int4_block is not for int8; use one of: weights, w8a8",
        ),
        (
            lambda d: d["targets"][0].update(backend="coreml", device="pixel-8"),
            r"targets\[0\]: device pixel-8 runs tflite, not coreml",
        ),
        (
            lambda d: (d["targets"][0].update(backend="tflite"), d["stages"][0].update(method="entropy")),
            r"backend tflite calibrates with minmax, not entropy",
        ),
        (
            lambda d: (d["targets"][0].update(backend="openvino"), d["stages"][0].update(method="entropy")),
            r"backend openvino calibrates with minmax, percentile, not entropy",
        ),
        (
            lambda d: d["stages"][0].update(smooth_quant_alpha=1.5),
            r"smooth_quant_alpha",
        ),
        (
            lambda d: d["model"].update(input_size=4),
            r"model\.input_size: .*between 8 and 4096 pixels, got 4",
        ),
        (
            lambda d: d["model"].update(num_classes=-1),
            r"model\.num_classes",
        ),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, change, message: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    change(data)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, data))


def test_overrides_set_nested_values_and_list_items(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, ["gates.max_top1_drop=0.25", "targets.0.threads=1", "check.runs=7"])
    assert recipe.gates.max_top1_drop == 0.25 and recipe.targets[0].threads == 1 and recipe.check.runs == 7
    with pytest.raises(RecipeError, match="no '='"):
        load_recipe(path, ["gates.max_top1_drop"])
    with pytest.raises(RecipeError, match="not an existing list item"):
        apply_override({"targets": []}, "targets.3.threads=1")


def test_unknown_recipe_lists_builtin_names() -> None:
    with pytest.raises(RecipeError, match="digits-ort-int8"):
        load_recipe("no-such-recipe")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(RecipeError, match=r"line \d+: not valid YAML"):
        load_recipe(path)


def test_input_size_and_headless_models_are_recipe_fields(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["model"] = {"name": "vit_small_patch14_dinov2", "num_classes": 0, "input_size": 224}
    recipe = load_recipe(write(tmp_path, data))
    assert recipe.model.size_kwargs() == {"img_size": 224}
    data["model"]["input_size"] = [224, 280]
    assert load_recipe(write(tmp_path, data)).model.size_kwargs() == {"img_size": [224, 280]}
