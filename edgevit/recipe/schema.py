"""The recipe schema: model, data, stages, targets, check settings and gates (pydantic, strict)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgevit.data.dataset import DataSpec
from edgevit.quant.settings import QuantizeStage
from edgevit.settings import Strict

Precision = Literal["fp32", "fp16", "int8"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class ModelSpec(Strict):
    """The float reference: a model name and/or a checkpoint (``builtin:<name>``, file or dir).

    ``input_size`` builds the model for that many pixels (one number: square; or [height, width]):
    a timm ViT's position embeddings are resampled at load and baked into the exported graph.
    ``num_classes: 0`` is a headless model (its outputs are features: the embedding task).
    """

    name: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = Field(default=None, ge=0, description="0: headless (features)")
    input_size: int | tuple[int, int] | None = Field(
        default=None, description="pixels the model is built for: 224 or [height, width]"
    )

    @field_validator("input_size")
    @classmethod
    def _sizes(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = (value,) if isinstance(value, int) else (value or ())
        if any(s < 8 or s > 4096 for s in sizes):
            raise ValueError(f"must be between 8 and 4096 pixels, got {value}")
        return value

    def size_kwargs(self) -> dict[str, Any]:
        """The model constructor's ``img_size`` for ``input_size`` (nothing when unset)."""
        if self.input_size is None:
            return {}
        size = self.input_size
        return {"img_size": size if isinstance(size, int) else list(size)}

    @model_validator(mode="after")
    def _needs_something(self) -> ModelSpec:
        if self.name is None and self.checkpoint is None:
            raise ValueError("set model.name, model.checkpoint or both")
        return self


class DataSection(Strict):
    """Calibration, evaluation and (for distillation) training images: inline specs or manifest names."""

    calibration: DataSpec
    evaluation: DataSpec
    train: DataSpec | None = None

    @field_validator("calibration", "evaluation", "train", mode="before")
    @classmethod
    def _manifest(cls, value: Any) -> Any:
        if isinstance(value, str):
            from edgevit.recipe.manifests import read_manifest

            return read_manifest(value)
        return value


class PruneTarget(Strict):
    """The budget: the fraction of the model's MACs or of its parameters to keep (one of them)."""

    macs: float | None = Field(default=None, gt=0, lt=1, description="keep at most this fraction of MACs")
    params: float | None = Field(default=None, gt=0, lt=1, description="keep at most this fraction of params")

    @model_validator(mode="after")
    def _one(self) -> PruneTarget:
        if (self.macs is None) == (self.params is None):
            raise ValueError("set exactly one of macs or params, e.g. `target: {macs: 0.5}`")
        return self


class PruneStage(Strict):
    """Structured pruning of a ViT-Plus: attention heads, MLP width, optionally whole blocks.

    Importance is measured on the calibration images: ``taylor`` (|sum w * dL/dw| per unit,
    cross-entropy on the labels) or ``magnitude`` (weight L2 norm). ``allocation: global`` removes
    the units with the least importance per MAC across all blocks; ``uniform`` removes the same
    fraction everywhere. ``remove_blocks`` first drops the blocks whose skipping costs least.
    """

    order: ClassVar[int] = 10
    stage: Literal["prune"]
    target: PruneTarget
    importance: Literal["taylor", "magnitude"] = "taylor"
    allocation: Literal["global", "uniform"] = "global"
    heads: bool = True
    mlp: bool = True
    remove_heads: int | None = Field(
        default=None, ge=1, description="remove exactly this many heads per block"
    )
    remove_blocks: int = Field(default=0, ge=0)
    min_heads: int = Field(default=1, ge=1, description="heads every block keeps")
    round_to: int = Field(default=8, ge=1, description="MLP widths stay multiples of this")
    steps: int = Field(default=1, ge=1, le=20, description="prune in this many re-scored steps")
    calibration_batch: int = Field(default=32, gt=0)

    @model_validator(mode="after")
    def _something_to_prune(self) -> PruneStage:
        if not (self.heads or self.mlp or self.remove_blocks or self.remove_heads):
            raise ValueError("nothing to prune: enable heads or mlp, or set remove_blocks")
        return self


# How a training stage runs, not what it trains: left out of its identity (resume and cache keys).
RUN_PLACEMENT = {"device", "precision", "nproc", "activation_checkpointing"}


class TrainingStage(Strict):
    """Where a training stage computes (``edgevit.compute``): ``auto`` is a GPU when torch sees
    one (under torchrun, each process's ``LOCAL_RANK``), else the CPU; ``precision: auto`` is bf16
    autocast on a GPU that has it, fp16 with a gradient scaler on one that has not, fp32 on the CPU."""

    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="auto, cpu, cuda or cuda:N"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    nproc: int = Field(
        default=1, ge=1, le=64, description="processes under torchrun (DistributedDataParallel)"
    )

    def identity(self) -> dict[str, Any]:
        """The settings that decide what the stage trains: all but where and on how many processes
        it runs, so a run resumes (and a build reuses it) on another device or world size."""
        return self.model_dump(mode="json", exclude=RUN_PLACEMENT)


class DistillStage(TrainingStage):
    """Knowledge distillation from the float reference (teacher) into a student.

    The student is the pruned model when a prune stage comes first, else the ViT-Plus named in
    ``student`` (trained from scratch). Loss: ``alpha`` x KL(teacher || student) at
    ``temperature`` (scaled by T^2) + (1 - alpha) x cross-entropy on the labels of ``data.train``;
    a segmentation model the same per pixel against its masks, a depth model relative L1 against
    the teacher's depth and the ground truth. ``nproc`` > 1 trains that many processes under
    torchrun (DistributedDataParallel).
    """

    order: ClassVar[int] = 20
    stage: Literal["distill"]
    student: str | None = Field(default=None, description="ViT-Plus name of a smaller student")
    epochs: int = Field(default=30, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    shift_pixels: int = Field(default=2, ge=0)
    distill_token: bool = Field(
        default=False, description="DeiT-style distillation token (ViT-Plus students)"
    )
    activation_checkpointing: bool = Field(
        default=False,
        description=(
            "recompute each block's activations in the backward pass instead of holding them "
            "(timm's grad checkpointing): less memory at a large batch for more compute; the same result"
        ),
    )
    seed: int = 0


class QatStage(TrainingStage):
    """Quantization-aware distillation (QAD): fine-tune the float model under each INT8 target's
    simulated grid (``edgevit.quant``: fake quantization with straight-through gradients) to match
    the float model it starts from (the teacher), on ``data.train``.

    Runs once per INT8 grid the recipe's targets build (targets that share a grid share the run),
    after equalization. Activation ranges are re-estimated on the calibration images (min/max, as
    the targets calibrate) at the start of every epoch, then frozen for the last
    ``freeze_ranges`` fraction of the epochs. The output is a float checkpoint that each target's
    own INT8 path quantizes. Loss as the distill stage's: ``alpha`` x KL at ``temperature`` +
    (1 - alpha) x cross-entropy on the labels.
    """

    order: ClassVar[int] = 25
    stage: Literal["qat"]
    epochs: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    # measured on the shapes model (README, qat stage: a 256-step sweep): Adam steps past 3e-5 undo more than they
    # gain on a trained model, and its first steps need the warm-up
    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=1.0, ge=0, le=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    shift_pixels: int = Field(default=2, ge=0)
    freeze_ranges: float = Field(
        default=0.34,
        ge=0,
        lt=1,
        description="fraction of the epochs, at the end, with activation ranges frozen",
    )
    seed: int = 0


Stage = Annotated[PruneStage | DistillStage | QatStage | QuantizeStage, Field(discriminator="stage")]


class Gates(Strict):
    """Pass/fail limits; a failed gate makes ``edgevit build`` exit 1."""

    max_top1_drop: float | None = Field(
        default=1.0, ge=0, description="points an artifact may lose against the float model it was built from"
    )
    max_compression_top1_drop: float | None = Field(
        default=1.0, ge=0, description="points prune/distill may lose against the float reference"
    )
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    max_compression_miou_drop: float | None = Field(
        default=1.0,
        ge=0,
        description="segmentation: mIoU points prune/distill may lose against the float reference",
    )
    max_compression_absrel_increase: float | None = Field(
        default=0.01, ge=0, description="depth: AbsRel prune/distill may add to the float reference's"
    )
    max_miou_drop: float | None = Field(
        default=1.0,
        ge=0,
        description="segmentation: mIoU points an artifact may lose against its float model",
    )
    min_pixel_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="segmentation: fraction of pixels whose class matches the float model's",
    )
    max_depth_absrel_increase: float | None = Field(
        default=0.01,
        ge=0,
        description="depth: AbsRel (vs ground truth) an artifact may add to its float model's",
    )
    max_depth_absrel_vs_float: float | None = Field(
        default=None, ge=0, description="depth: mean relative difference from the float model's depth"
    )
    min_depth_pearson: float | None = Field(
        default=None, ge=-1, le=1, description="depth: Pearson correlation with the float model's depth"
    )
    min_embedding_sqnr_db: float | None = Field(
        default=None, description="embedding: feature SQNR (dB) against the float model's features"
    )
    min_embedding_cosine: float | None = Field(
        default=None, ge=-1, le=1, description="embedding: mean cosine with the float model's features"
    )
    min_neighbour_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="embedding: fraction of images whose nearest neighbour is the float model's",
    )
    min_recall_at_5: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="embedding: fraction of the float model's 5 nearest neighbours in the artifact's 5",
    )
    max_compression_cosine_distance: float | None = Field(
        default=0.01,
        ge=0,
        description="embedding: 1 - cosine prune/distill may move the features from the reference's",
    )
    max_latency_p50_ms: float | None = Field(default=None, gt=0)
    max_latency_p90_ms: float | None = Field(default=None, gt=0)
    fail_on_skipped: bool = False


class TargetSpec(Strict):
    """One artifact to build and check: backend + precision (+ device profile, options)."""

    name: str = Field(pattern=NAME_PATTERN)
    backend: str
    precision: Precision = "fp32"
    device: str | None = Field(default=None, description="profile in targets/ (default: this host)")
    threads: int | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    gates: Gates | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from edgevit.targets import TARGETS

        TARGETS.get(value)  # raises with the list of valid names
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        from edgevit.devices import resolve_device

        resolve_device(value)  # raises with the list of profiles
        return value

    @model_validator(mode="after")
    def _supported_precision(self) -> TargetSpec:
        from edgevit.targets import TARGETS

        supported = TARGETS.get(self.backend).precisions
        if self.precision not in supported:
            raise ValueError(f"backend {self.backend} builds {', '.join(supported)}, not {self.precision}")
        if self.device is not None:
            from edgevit.devices import resolve_device

            profile = resolve_device(self.device)
            if profile.runtimes and self.backend not in profile.runtimes:
                raise ValueError(
                    f"device {self.device} runs {', '.join(profile.runtimes)}, not {self.backend}: "
                    "change the backend or the device"
                )
            if profile.precisions and self.precision not in profile.precisions:
                raise ValueError(
                    f"device {self.device} runs {', '.join(profile.precisions)}, not {self.precision}"
                )
        return self

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from edgevit.targets import TARGETS

        backend, precision = info.data.get("backend"), info.data.get("precision")
        if backend is None or precision is None:
            return value  # the backend or precision error is reported instead
        try:
            TARGETS.get(backend).parse_options(value, precision)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            got = "" if err["type"] == "extra_forbidden" else f", got {err.get('input')!r}"
            schema = TARGETS.get(backend).options_schema
            known = ", ".join(schema.model_fields) if schema else "none"
            msg = f"unknown option (valid: {known})" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValueError(f"{where}: {msg}{got}") from None
        return value


class CheckSpec(Strict):
    """How artifacts are measured: latency runs at a fixed batch and thread count."""

    warmup: int = Field(default=10, ge=0)
    runs: int = Field(default=100, gt=0)
    batch: int = Field(default=1, gt=0)
    threads: int = Field(default=2, gt=0)
    eval_batch: int = Field(default=64, gt=0)
    layerwise_samples: int = Field(
        default=16,
        ge=0,
        description="evaluation images for the layer-wise comparison of INT8 ONNX/OpenVINO artifacts (0: off)",
    )


class Recipe(Strict):
    """A validated build recipe."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: ModelSpec
    data: DataSection
    stages: list[Stage] = Field(default_factory=list)
    targets: list[TargetSpec] = Field(min_length=1)
    check: CheckSpec = CheckSpec()
    gates: Gates = Gates()
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the recipe are resolved against (the recipe's own)."""
        return self._base_dir

    def quantize(self) -> QuantizeStage | None:
        """The quantize stage, if any."""
        return next((s for s in self.stages if isinstance(s, QuantizeStage)), None)

    def qat(self) -> QatStage | None:
        """The quantization-aware distillation stage, if any."""
        return next((s for s in self.stages if isinstance(s, QatStage)), None)

    def qat_on_demand(self) -> bool:
        """Whether quantization-aware distillation runs only for INT8 targets whose post-training
        INT8 misses the accuracy budget (``accuracy_budget.recover``), not for every INT8 target."""
        q = self.quantize()
        return q is not None and q.accuracy_budget is not None and q.accuracy_budget.recover != "float"

    def qat_settings(self) -> QatStage | None:
        """How quantization-aware distillation trains in this build (None: it never runs): the qat
        stage, or its defaults when only the accuracy budget's ``recover`` asks for it."""
        listed = self.qat()
        if listed is None and self.qat_on_demand():
            return QatStage(stage="qat")
        return listed

    def compression(self) -> list[PruneStage | DistillStage]:
        """The stages that change the float model, in order (prune, distill)."""
        return [s for s in self.stages if isinstance(s, PruneStage | DistillStage)]

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dup)}")
        kinds = [s.stage for s in self.stages]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each stage may appear once")
        orders = [s.order for s in self.stages]
        if orders != sorted(orders):
            raise ValueError(
                f"stages are out of order ({', '.join(kinds)}): the order is prune, distill, qat, quantize"
            )
        q = self.quantize()
        if q is not None:
            from edgevit.targets import TARGETS

            for i, t in enumerate(self.targets):
                methods = TARGETS.get(t.backend).calibration_methods
                if t.precision == "int8" and q.method not in methods:
                    raise ValueError(
                        f"targets[{i}]: backend {t.backend} calibrates with {', '.join(methods)}, "
                        f"not {q.method}: set the quantize stage's method to one of those"
                    )
        if self.qat() is not None:
            if self.data.train is None:
                raise ValueError("a qat stage needs training images: set data.train (e.g. shapes-train)")
            if q is None or not any(t.precision == "int8" for t in self.targets):
                raise ValueError(
                    "a qat stage trains for INT8 targets: add a quantize stage and an int8 target"
                )
        if self.qat_on_demand() and self.data.train is None:
            raise ValueError(
                "quantize.accuracy_budget.recover trains with qat, which needs training images: set "
                "data.train (e.g. shapes-train) or recover: float"
            )
        distill = next((s for s in self.stages if isinstance(s, DistillStage)), None)
        if distill is not None:
            if self.data.train is None:
                raise ValueError("a distill stage needs training images: set data.train (e.g. digits-train)")
            if distill.student is None and not any(isinstance(s, PruneStage) for s in self.stages):
                raise ValueError("distill needs a student: put a prune stage before it or set student")
            if distill.student is not None and any(isinstance(s, PruneStage) for s in self.stages):
                raise ValueError("distill.student names a new model, but a prune stage already makes one")
        if any(t.precision == "int8" for t in self.targets) and self.quantize() is None:
            raise ValueError("int8 targets need a `quantize` stage in stages (e.g. `- stage: quantize`)")
        return self
