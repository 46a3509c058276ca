"""Evaluate a saved Core ML ML Program op by op on the host: the ``mil-reference`` simulation.

Core ML's own ``predict`` runs only on macOS. On other hosts edgevit loads the program that the
.mlpackage stores (coremltools' milproto loader) and executes its operations in order:

- most ops through coremltools' own NumPy implementation (``value_inference``, the code its
  constant folding uses);
- compressed weights (``constexpr_*``: INT8/INT4 affine, palettized LUTs) through their
  ``materialized_val_inference``;
- ``conv``, ``avg_pool``, ``upsample_bilinear`` and ``quantize``/``dequantize``, which coremltools
  does not evaluate, and
  ``linear``, ``matmul`` and ``gelu``, which it evaluates slowly, through edgevit's own NumPy code.

Every value is rounded to its variable's MIL dtype, so an FP16 program rounds to float16 between
ops (and overflows to inf where float16 would); inside one op NumPy computes in float32. An FP16
``layer_norm`` whose squared deviations exceed float16's range is flagged (``findings``): computed
in float16, its variance would overflow. This is a reference for the program's arithmetic, not a
model of a device: the Neural Engine and GPU may order or fuse operations differently. Numbers
from it are labelled ``simulated``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import NotCheckable

FLOAT16_MAX = 65504.0
Observer = Callable[[str, np.ndarray], None]
F32 = Callable[[Any], np.ndarray]  # a constant input as float32, converted once


class UnsupportedOp(NotCheckable):
    """The program holds an op the reference evaluator cannot execute."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep coremltools' prints out of the log and of ``--json`` output: warnings on import
    (unsupported scikit-learn/torch versions, no native Core ML on Linux) and a tqdm bar per pass."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def load_program(package: Path) -> tuple[Any, Any]:
    """The MIL program stored in an .mlpackage, and its spec (no Core ML runtime needed)."""
    with quiet():
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load

    ml = ct.models.MLModel(str(package), skip_model_load=True)
    spec = ml.get_spec()
    prog = load(spec, specification_version=spec.specificationVersion, file_weights_dir=ml.weights_dir)
    return prog, spec


def _padding(
    op: Any, spatial: tuple[int, ...], kernel: tuple[int, ...], dilations: tuple[int, ...]
) -> list[int]:
    """Explicit (before, after) padding per spatial dim for a conv's pad_type."""
    pad_type = op.pad_type.val
    n = len(spatial)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type == "custom":
        return [int(p) for p in op.pad.val]
    pads = []
    strides = [int(s) for s in op.strides.val] if op.strides is not None else [1] * n
    for size, k, d, s in zip(spatial, kernel, dilations, strides, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        pads += [big, small] if pad_type == "same_lower" else [small, big]
    return pads


def _windows(x: np.ndarray, sizes: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """Sliding windows over the trailing spatial dims: N, C, *out, *kernel (a view, no copy)."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = len(sizes)
    spans = [(k - 1) * d + 1 for k, d in zip(sizes, dilations, strict=True)]
    win = sliding_window_view(x, spans, axis=tuple(range(2, 2 + n)))
    picks = [slice(None, None, s) for s in strides] + [slice(None, None, d) for d in dilations]
    return win[(slice(None), slice(None), *picks)]


def _conv(op: Any, f32: F32) -> np.ndarray:
    x = np.asarray(op.x.val, np.float32)
    w = f32(op.weight)
    n = w.ndim - 2
    dil = [int(d) for d in op.dilations.val] if op.dilations is not None else [1] * n
    strides = [int(s) for s in op.strides.val] if op.strides is not None else [1] * n
    pads = _padding(op, tuple(x.shape[2:]), tuple(w.shape[2:]), tuple(dil))
    xp = np.pad(x, [(0, 0), (0, 0), *[(pads[2 * i], pads[2 * i + 1]) for i in range(n)]])
    win = _windows(xp, list(w.shape[2:]), strides, dil)  # N, C, *out, *kernel
    groups = int(op.groups.val) if op.groups is not None else 1
    cin, cout = w.shape[1], w.shape[0] // groups
    axes = ([1, *range(2 + n, 2 + 2 * n)], [1, *range(2, 2 + n)])  # (C, *kernel) of windows and weight
    outs = [
        np.tensordot(win[:, g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout], axes=axes)
        for g in range(groups)
    ]  # each N, *out, cout
    out = np.moveaxis(np.concatenate(outs, axis=-1), -1, 1)
    if op.bias is not None:
        out = out + f32(op.bias).reshape(1, -1, *([1] * n))
    return np.ascontiguousarray(out)


def _avg_pool(op: Any, f32: F32) -> np.ndarray:
    x = np.asarray(op.x.val, np.float32)
    kernel = [int(k) for k in op.kernel_sizes.val]
    n = len(kernel)
    strides = [int(s) for s in op.strides.val] if op.strides is not None else [1] * n
    pad_type = op.pad_type.val
    pads = [int(p) for p in op.pad.val] if pad_type == "custom" and op.pad is not None else [0] * (2 * n)
    if pad_type not in ("valid", "custom"):
        raise UnsupportedOp(f"avg_pool {op.name}: pad_type {pad_type} has no reference evaluator")
    exclude = (
        bool(op.exclude_padding_from_average.val) if op.exclude_padding_from_average is not None else False
    )
    ceil = bool(op.ceil_mode.val) if op.ceil_mode is not None else False
    widths, counted = [], np.ones(x.shape[2:], np.float32)
    for i, (size, k, s) in enumerate(zip(x.shape[2:], kernel, strides, strict=True)):
        before, after = pads[2 * i], pads[2 * i + 1]
        span = size + before + after - k
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + before:
            out -= 1  # the last window must start inside the input or the leading padding
        extra = max((out - 1) * s + k - (size + before + after), 0)
        widths.append((before, after + extra))
        # The divisor counts the input, and the explicit padding unless excluded; never the ceil overhang.
        pad_count = [(0, 0)] * n
        pad_count[i] = (before, after) if not exclude else (0, 0)
        counted = np.pad(counted, pad_count, constant_values=1.0)
        edge = [(0, 0)] * n
        edge[i] = (before, after + extra) if exclude else (0, extra)
        counted = np.pad(counted, edge, constant_values=0.0)
    xp = np.pad(x, [(0, 0), (0, 0), *widths])
    axes = tuple(range(-n, 0))
    sums = _windows(xp, kernel, strides, [1] * n).sum(axis=axes)
    counts = _windows(counted[None, None], kernel, strides, [1] * n).sum(axis=axes)
    return np.asarray(sums / counts, np.float32)


def _gelu(op: Any, f32: F32) -> np.ndarray:
    # coremltools' EXACT mode maps math.erf over every element (np.vectorize): seconds per image.
    from scipy.special import erf

    x = np.asarray(op.x.val, np.float32)
    mode = op.mode.val if op.mode is not None else "EXACT"
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _along(param: Any, rank: int, axis: Any) -> np.ndarray:
    """A quantization scale/zero point shaped to broadcast against a tensor of ``rank``."""
    p = np.asarray(param, np.float32)
    if p.ndim == 0 or axis is None:
        return p
    shape = [1] * rank
    shape[int(axis.val) % rank] = p.size
    return p.reshape(shape)


def _quantize(op: Any, f32: F32) -> np.ndarray:
    x = np.asarray(op.input.val, np.float32)
    scale = _along(op.scale.val, x.ndim, op.axis)
    zero = 0.0 if op.zero_point is None else _along(op.zero_point.val, x.ndim, op.axis)
    info = np.iinfo(np.dtype(op.output_dtype.val))
    return np.clip(np.round(x / scale) + zero, info.min, info.max)


def _dequantize(op: Any, f32: F32) -> np.ndarray:
    x = np.asarray(op.input.val, np.float32)
    scale = _along(op.scale.val, x.ndim, op.axis)
    zero = 0.0 if op.zero_point is None else _along(op.zero_point.val, x.ndim, op.axis)
    return (x - zero) * scale


def _linear(op: Any, f32: F32) -> np.ndarray:
    out = np.asarray(op.x.val, np.float32) @ f32(op.weight).T
    return out if op.bias is None else out + f32(op.bias)


def _matmul(op: Any, f32: F32) -> np.ndarray:
    x, y = np.asarray(op.x.val, np.float32), np.asarray(op.y.val, np.float32)
    if op.transpose_x is not None and op.transpose_x.val:
        x = np.swapaxes(x, -1, -2)
    if op.transpose_y is not None and op.transpose_y.val:
        y = np.swapaxes(y, -1, -2)
    return np.asarray(np.matmul(x, y))


def _bilinear_axis(
    n_in: int, n_out: int, align: bool, half: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as MIL's upsample_bilinear samples its grid."""
    o = np.arange(n_out, dtype=np.float64)
    if align:
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    elif half:
        spacing = n_in / n_out
        src = o * spacing + 0.5 * spacing - 0.5
    else:
        src = o * n_in / n_out
    src = np.clip(src, 0, n_in - 1)
    low = np.floor(src).astype(np.int64)
    return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)


def _upsample_bilinear(op: Any, f32: F32) -> np.ndarray:
    x = np.asarray(op.x.val, np.float32)
    scale_h = 1.0 if op.scale_factor_height is None else float(op.scale_factor_height.val)
    scale_w = 1.0 if op.scale_factor_width is None else float(op.scale_factor_width.val)
    align = True if op.align_corners is None else bool(op.align_corners.val)
    given = getattr(op, "half_pixel_centers", None)  # iOS16+; defaults to not align_corners
    half = (not align) if given is None else bool(given.val)
    h, w = x.shape[-2:]
    lo, hi, wt = _bilinear_axis(h, int(np.floor(h * scale_h)), align, half)
    x = x[..., lo, :] * (1 - wt)[:, None] + x[..., hi, :] * wt[:, None]
    lo, hi, wt = _bilinear_axis(w, int(np.floor(w * scale_w)), align, half)
    return np.asarray(x[..., lo] * (1 - wt) + x[..., hi] * wt)


# Ops coremltools cannot evaluate (conv, avg_pool, quantize/dequantize) or evaluates slowly
# (gelu maps math.erf element by element; linear/matmul convert float16 weights on every call).
_OWN: dict[str, Callable[[Any, F32], np.ndarray]] = {
    "conv": _conv,
    "avg_pool": _avg_pool,
    "gelu": _gelu,
    "linear": _linear,
    "matmul": _matmul,
    "quantize": _quantize,
    "dequantize": _dequantize,
    "upsample_bilinear": _upsample_bilinear,
}


class MilReference:
    """Runs a saved ML Program on NumPy, one sample at a time (``run``)."""

    def __init__(self, package: Path) -> None:
        from coremltools.converters.mil.mil import types

        self.package = package
        self.program, self.spec = load_program(package)
        self.function = self.program.functions["main"]
        self.ops = list(self.function.operations)
        self.input_names = list(self.function.inputs)
        self.output_names = [v.name for v in self.function.outputs]
        self._types = types
        self._constexpr: dict[str, np.ndarray] = {}
        self._var_info: dict[str, tuple[bool, Any]] = {}
        self._consts: dict[str, np.ndarray] = {}
        # Checks of FP16 arithmetic, over all samples run: op name -> finding.
        self.layer_norm_risk: dict[str, float] = {}  # largest squared deviation above float16's max
        self.nonfinite: dict[str, int] = {}  # first op of a sample whose output is inf/nan -> samples
        missing = self.unsupported()
        if missing:
            raise UnsupportedOp(
                f"{package.name}: no reference evaluator for MIL op(s) {', '.join(missing)}",
                "run the model on macOS (Core ML predict) to check it",
            )

    def unsupported(self) -> list[str]:
        """Op types of this program that the evaluator cannot run (empty when it runs them all)."""
        from coremltools.converters.mil.mil.operation import Operation

        missing = set()
        for op in self.ops:
            kind = op.op_type
            if kind == "const" or kind in _OWN:
                continue
            if kind.startswith("constexpr_"):
                if not hasattr(op, "materialized_val_inference"):
                    missing.add(kind)
            elif type(op).value_inference is Operation.value_inference:
                missing.add(kind)
        return sorted(missing)

    def _f32(self, var: Any) -> np.ndarray:
        """A constant input as float32, converted once (FP16 programs store weights as float16)."""
        if var.op is None or var.op.op_type != "const":
            return np.asarray(var.val, np.float32)
        cached = self._consts.get(var.name)
        if cached is None:
            cached = self._consts[var.name] = np.asarray(var.val, np.float32)
        return cached

    def _store(self, var: Any, value: Any) -> np.ndarray:
        """Round to the var's MIL dtype (float16 programs round here) and attach it to the var;
        the attached copy of a float16 value is float32, so the next op computes in float32."""
        info = self._var_info.get(var.name)
        if info is None:
            types = self._types
            tensor = types.is_tensor(var.sym_type)
            dtype = types.nptype_from_builtin(var.dtype) if tensor or types.is_scalar(var.sym_type) else None
            info = self._var_info[var.name] = (tensor, dtype)
        tensor, dtype = info
        value = np.asarray(value)
        if dtype is not None and value.dtype != dtype:
            value = value.astype(dtype)
        compute = value.astype(np.float32) if value.dtype == np.float16 else value
        holder = var.sym_type()
        if tensor:
            holder._val = compute  # the setter would cast float32 back to float16
        else:
            holder.val = compute.item() if compute.ndim == 0 else compute
        var._sym_val = holder
        return value

    def run(self, feeds: dict[str, np.ndarray], observe: Observer | None = None) -> dict[str, np.ndarray]:
        """Execute the program on one sample (``feeds``: input name -> array of the input's shape).

        ``observe(name, value)`` sees the value of every non-constant op output, in order.
        """
        computed: list[Any] = []
        first_bad = True
        try:
            for name in self.input_names:
                var = self.function.inputs[name]
                value = self._store(var, feeds[name])
                computed.append(var)
                if observe is not None:
                    observe(name, value)
            for op in self.ops:
                if op.op_type == "const":
                    continue
                if op.op_type.startswith("constexpr_"):
                    if op.name not in self._constexpr:
                        self._constexpr[op.name] = np.asarray(op.materialized_val_inference())
                    self._store(op.outputs[0], self._constexpr[op.name])
                    continue
                if op.op_type == "layer_norm":
                    self._check_layer_norm(op)
                if op.op_type in _OWN:
                    results: Any = _OWN[op.op_type](op, self._f32)
                else:
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        results = op.value_inference()
                if not isinstance(results, (tuple, list)):
                    results = (results,)
                for var, value in zip(op.outputs, results, strict=True):
                    with np.errstate(over="ignore", invalid="ignore"):
                        stored = self._store(var, value)
                    computed.append(var)
                    if first_bad and stored.dtype.kind == "f" and not np.isfinite(stored).all():
                        self.nonfinite[op.name] = self.nonfinite.get(op.name, 0) + 1
                        first_bad = False
                    if observe is not None:
                        observe(var.name, stored)
            return {name: np.asarray(self._value(name)) for name in self.output_names}
        finally:
            for var in computed:  # the next sample must not see this one's values
                var._sym_val = None

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` under Core ML's MLModel name, so the same batching code drives both."""
        return self.run(feeds)

    def _check_layer_norm(self, op: Any) -> None:
        """Flag an FP16 layer_norm whose squared deviations exceed float16's max (65504): computed in
        float16, its variance overflows. (This evaluator computes inside an op in float32.)"""
        if op.outputs[0].dtype != self._types.fp16:
            return
        x = np.asarray(op.x.val, np.float32)
        axes = tuple(int(a) for a in op.axes.val) if op.axes is not None else (-1,)
        worst = float(np.max(np.square(x - x.mean(axis=axes, keepdims=True)))) if x.size else 0.0
        if worst > FLOAT16_MAX:
            self.layer_norm_risk[op.name] = max(worst, self.layer_norm_risk.get(op.name, 0.0))

    def findings(self) -> dict[str, Any]:
        """FP16 problems seen so far (empty dicts when none)."""
        return {
            "layer_norm_fp16_overflow": {k: round(v, 1) for k, v in self.layer_norm_risk.items()},
            "first_nonfinite_op": dict(self.nonfinite),
        }

    def _value(self, name: str) -> np.ndarray:
        var = next(v for v in self.function.outputs if v.name == name)
        return np.asarray(var.val, np.float32)
