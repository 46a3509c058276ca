"""Post-training INT8 settings (the recipe's quantize stage) and the accuracy budget.

They live below the recipe and the targets, which both read them: the recipe validates them, the
targets lower by them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from edgevit.settings import Strict


class AccuracyBudget(Strict):
    """What an INT8 target must keep against the float model it is built from: edgevit keeps the
    most sensitive layers float, fewest first, until it does (every backend)."""

    max_top1_drop: float | None = Field(default=None, ge=0, description="points of top-1")
    min_sqnr_db: float | None = Field(default=None, description="output (logit) SQNR against the float model")
    min_agreement: float | None = Field(default=None, ge=0, le=1, description="top-1 agreement")
    max_miou_drop: float | None = Field(default=None, ge=0, description="segmentation: points of mIoU")
    min_pixel_agreement: float | None = Field(
        default=None, ge=0, le=1, description="segmentation: pixels whose class is the float model's"
    )
    max_depth_absrel_vs_float: float | None = Field(
        default=None, ge=0, description="depth: mean relative difference from the float model's depth"
    )
    min_depth_pearson: float | None = Field(
        default=None, ge=-1, le=1, description="depth: Pearson correlation with the float model's depth"
    )
    min_recall_at_5: float | None = Field(
        default=None, ge=0, le=1, description="embedding: the float model's 5 nearest neighbours kept"
    )
    max_float_layers: int = Field(
        default=8,
        ge=1,
        description="give up (best effort: the closest candidate) beyond this many float layers",
    )
    ranking: Literal["simulated", "measured", "alone"] = Field(
        default="simulated",
        description=(
            "how layers are ranked: 'simulated' switches each quantized layer back to float in the "
            "torch model of the target's INT8 grid (edgevit.quant) and ranks by the logit SQNR gained "
            "on calibration images (no builds; 'measured' where the grid is not modelled); "
            "'measured' does the same with one build of the target per layer; 'alone' ranks by the "
            "layer-wise comparison's SQNR of each layer run alone (no extra builds; blind to how "
            "errors propagate)"
        ),
    )
    ranking_samples: int = Field(default=64, gt=0, description="calibration images the ranking runs on")
    recover: Literal["float", "qat", "qat_then_float"] = Field(
        default="float",
        description=(
            "what a target whose post-training INT8 misses the budget does: 'float' keeps its most "
            "sensitive layers float (the search above); 'qat' runs quantization-aware distillation "
            "against its grid (the recipe's qat stage settings, else that stage's defaults; needs "
            "data.train) and keeps every layer INT8; 'qat_then_float' runs qat, then the float search "
            "on the trained model if the budget is still missed. With qat in it, a qat stage in the "
            "recipe runs only for the targets that need it"
        ),
    )

    @model_validator(mode="after")
    def _some_limit(self) -> AccuracyBudget:
        if all(getattr(self, name) is None for name in BUDGET_LIMITS):
            raise ValueError(f"set one of {', '.join(BUDGET_LIMITS)}")
        return self

    def limits(self) -> dict[str, float]:
        """The limits set: field name -> value."""
        return {name: getattr(self, name) for name in BUDGET_LIMITS if getattr(self, name) is not None}

    def met(self, scores: dict[str, Any]) -> bool:
        """Whether ``scores`` (a target's accuracy entry) meet every limit set."""
        return self.shortfall(scores) == 0

    def shortfall(self, scores: dict[str, Any]) -> float:
        """How far ``scores`` miss the budget: the sum of each set limit's miss, in points (of
        top-1, mIoU, or percent for fractions) and dB of SQNR; 0 when every limit is met. A limit
        whose score is not in ``scores`` (another task's) raises KeyError."""
        total = 0.0
        for name, limit in self.limits().items():
            key, kind, scale = BUDGET_LIMITS[name]
            value = float(scores[key])
            miss = (value - limit) * scale if kind == "max" else (limit - value) * scale
            total += max(0.0, miss - (1e-7 if scale == 100 else 1e-9 if kind == "max" else 0.0))
        return total


DECODER_PREFIX = "dense_head."  # a dense model's decoder (edgevit.models.dense)

# budget field -> (the score it limits, max or min, the scale of its miss: points per unit)
BUDGET_LIMITS: dict[str, tuple[str, str, float]] = {
    "max_top1_drop": ("top1_drop", "max", 1.0),
    "min_sqnr_db": ("sqnr_db", "min", 1.0),
    "min_agreement": ("agreement", "min", 100.0),
    "max_miou_drop": ("miou_drop", "max", 1.0),
    "min_pixel_agreement": ("pixel_agreement", "min", 100.0),
    "max_depth_absrel_vs_float": ("absrel_vs_float", "max", 100.0),
    "min_depth_pearson": ("pearson", "min", 100.0),
    "min_recall_at_5": ("recall_at_5", "min", 100.0),
}


class QuantizeStage(Strict):
    """Post-training INT8 settings shared by every int8 target of the recipe.

    By default only the Linear layers (MatMul/Gemm with a weight input) are quantized, with
    per-channel symmetric INT8 weights; LayerNorm, Softmax, GELU, residual Adds, the activation x
    activation attention MatMuls and the patch-embedding Conv stay float. Measured with ONNX
    Runtime on an AVX2 host (7-bit weights, see targets/cpu.py; tools/bench_calibration.py):
    quantizing the patch-embedding Conv cost 1.0 dB of logit SQNR on digits and 1.1 dB on shapes
    for a ViT-Plus-base about 4% faster; adding the attention MatMuls cost another 0.7–1.9 dB and
    was slower on the small models (p50 4.04 vs 2.52 ms). ``matmul_scope: all`` and
    ``patch_embed: true`` turn them on.
    """

    order: ClassVar[int] = 30
    stage: Literal["quantize"]
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    matmul_scope: Literal["weights", "all"] = "weights"
    patch_embed: bool = False
    decoder: bool = Field(
        default=False,
        description=(
            "quantize a dense model's decoder (the Convs of its segmentation or depth head); with an "
            "accuracy budget, the ones measured too sensitive stay float"
        ),
    )
    linear_outputs: Literal["int8", "float"] = Field(
        default="int8",
        description=(
            "int8: ONNX Runtime's and TensorRT's QDQ quantizes each Linear layer's output too (what "
            "fuses into QLinearMatMul); float: only its input and weight are INT8 (no Q/DQ after the "
            "MatMul). Measured on DINOv2 ViT-S/14: the outputs alone cost the features 23.4 dB of SQNR, "
            "their per-tensor range spent on a few massive channels. Core ML w8a8: float leaves out "
            "the quantize/dequantize coremltools puts after each linear. TFLite's static INT8 "
            "fully-connected layers always give INT8 outputs; OpenVINO never quantizes them"
        ),
    )
    calibration_batch: int = Field(default=16, gt=0)
    smooth_quant_alpha: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description=(
            "SmoothQuant migration strength for the Linear layers (OpenVINO/NNCF; the other backends "
            "have none and ignore it): null is edgevit's 0.5 (measured best with NNCF's 0.95 and off; "
            "README), -1 turns it off"
        ),
    )
    float_layers: list[str] = Field(
        default_factory=list,
        description="layers (module paths, e.g. blocks.3.attn.proj) kept float in every int8 target",
    )
    equalize: Literal["off", "auto"] = Field(
        default="auto",
        description=(
            "auto: fold SmoothQuant-style scales into the float model before export (LayerNorm -> "
            "qkv/fc1/head, v -> proj), strength chosen per INT8 grid with the INT8 simulator on the "
            "calibration images (none when that measures best); every backend whose static INT8 grid "
            "edgevit.quant models (Linear scope). off: export the model as it is"
        ),
    )
    rotate: Literal["off", "auto", "on"] = Field(
        default="auto",
        description=(
            "fold orthogonal rotations into the float model before export (edgevit.quant.rotate: each "
            "head's values, the residual stream, a block Hadamard before fc2), which spread the few huge "
            "channels of a real pretrained ViT's activations. auto: one more candidate of the equalize "
            "step's choice, kept under the same margin and confirmation; on: always, scales chosen "
            "after it; off: never"
        ),
    )
    rotation_seeds: int = Field(
        default=3,
        ge=1,
        le=16,
        description=(
            "how many random rotations (seeds 0..n-1) the INT8 simulator scores per grid when rotating; "
            "the best on the calibration images is the rotation candidate (a rotation's random signs and "
            "basis move a real ViT's INT8 SQNR by about 0.5 dB)"
        ),
    )
    weight_rounding: Literal["nearest", "gptq"] = Field(
        default="nearest",
        description=(
            "nearest: each backend rounds every weight to its nearest INT8 level. gptq: edgevit rounds "
            "the Linear weights first, onto each target's own grid, with GPTQ (each input column's "
            "rounding error spread over the columns after it, weighted by the layer's input statistics "
            "on the calibration images), and exports weights that already lie on that grid, so the "
            "backend's quantizer keeps those levels (edgevit.quant.gptq; not with qat, which trains its "
            "own, nor OpenVINO's SmoothQuant, which rescales weights after export)"
        ),
    )
    accuracy_budget: AccuracyBudget | None = Field(
        default=None, description="keep the most sensitive layers float until the budget is met"
    )

    @property
    def folds(self) -> bool:
        """Whether an INT8 target gets the equalize step: scales to choose, or rotations to fold."""
        return self.equalize == "auto" or self.rotate != "off"

    def for_convs(self, convs: Sequence[str]) -> QuantizeStage:
        """The stage the backends and the INT8 simulator see for a model whose Conv layers are
        ``convs`` (module paths): their Conv switch (``patch_embed``) is on when the patch embedding
        or the decoder is in scope, and the Convs out of scope are among ``float_layers``."""
        if not (self.patch_embed or self.decoder):
            return self

        def in_scope(conv: str) -> bool:
            return self.decoder if conv.startswith(DECODER_PREFIX) else self.patch_embed

        kept = [c for c in convs if not in_scope(c) and c not in self.float_layers]
        if self.patch_embed and not kept:
            return self
        return self.model_copy(update={"patch_embed": True, "float_layers": [*self.float_layers, *kept]})
