"""What INT8 means on each backend: one definition of the grids the targets build.

Each backend's INT8 artifact quantizes the inputs of the layers in the recipe's scope per tensor
(ranges from calibration) and their weights per output channel, symmetrically. They differ in the
activation grid: ONNX Runtime and OpenVINO use asymmetric UINT8 (the range stretched to include
0), TensorRT symmetric INT8 (explicit-quantization Q/DQ), and in the weight width: 7 bits where
``targets/cpu.py`` decides an x86 CPU without VNNI would saturate. On such a CPU the CPU
backends' kernels add each pair of UINT8 x INT8 products in int16 and saturate there
(``int16_pairs``; ``edgevit.quant.saturation``). The simulator (``edgevit.quant.simulate``)
computes in torch what these grids do to a model.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Literal

import torch


@dataclass(frozen=True)
class Int8Scheme:
    """One backend's INT8 grid for activations and weights."""

    backend: str
    activation_symmetric: bool  # False: asymmetric UINT8 over [min(lo, 0), max(hi, 0)]
    weight_bits: int = 8  # 7: ONNX Runtime reduce_range / NNCF overflow_fix
    per_channel: bool = True
    # The 7-bit weight step is absmax / this: 64 for ONNX Runtime's reduce_range (levels -64..64);
    # 63.5 for NNCF's overflow fix, whose half-range FakeQuantize spans ±2·absmax in 255 levels.
    seven_bit_qmax: float = 64.0
    # NNCF's FakeQuantize counts weight levels from the low end of its range, where zero is level
    # 127: a weight rounds as round(127 + w / step) - 127, so a tie goes to the even level from
    # there (a 7-bit channel's maximum, exactly 63.5 steps, lands on 63, not 64).
    weight_level_offset: int = 0
    # ONNX Runtime with UINT8 weights (``unsigned_weights``): symmetric around zero point 128 (64 for
    # 7 bits), a step of absmax / 127.5, levels -128..127; its MLAS U8U8 kernels widen both operands
    # to int16 before multiplying, so nothing saturates even with ``int16_pairs``.
    weight_unsigned: bool = False
    # x86 without VNNI: the integer kernels multiply UINT8 activations (zero point included) by INT8
    # weights with VPMADDUBSW, which adds each pair of neighbouring products along the reduction in
    # int16, saturating at -32768..32767 (edgevit.quant.saturation). A Conv's reduction runs over
    # (kh, kw, input channel) with the channels padded to ``conv_channel_block`` per kernel
    # position: 1 for ONNX Runtime's NHWC im2col, 4 for oneDNN's blocked layout (OpenVINO).
    int16_pairs: bool = False
    conv_channel_block: int = 1
    # ONNX Runtime's QDQ quantizer also puts Q/DQ on each MatMul's output (before the bias Add; a
    # Gemm's output includes its bias), so that the pair fuses into QLinearMatMul.
    quantize_outputs: bool = False
    output_after_bias: bool = False  # TFLite's FULLY_CONNECTED carries its bias: Q/DQ after it
    head_output: bool = True  # the classifier's output (the model's) is quantized too; not by Core ML
    # The TFLite converter folds a LayerNorm's γ/β into the Linear layers it feeds directly: their
    # input is the plain normalized activation (the final norm, pooled before the head, keeps them).
    folds_norms: bool = False
    # NNCF's SmoothQuant on every MatMul input it quantizes, at this strength (OpenVINO).
    smooth_alpha: float | None = None
    # OpenVINO without SmoothQuant: NNCF moves the classifier's input quantizer above the class
    # token's Gather, so its range spans every token of the final norm (read from the IR; with
    # SmoothQuant its Multiply sits after the Gather and the quantizer follows it).
    head_range_over_tokens: bool = False
    # What ``matmul_scope: all`` quantizes of the attention matmuls (q@kᵀ, attn@v): "all" both
    # inputs of both (and their outputs with ``quantize_outputs``); "fused" OpenVINO's fused
    # ScaledDotProductAttention: q, and k where it is not pooled, on symmetric INT8 grids (NNCF's
    # rule for its inputs, read from the artifacts' FakeQuantize ranges); "none" nothing (coremltools
    # quantizes the activations of conv, linear, pooling and add only).
    attention: Literal["all", "fused", "none"] = "all"
    # TFLite's dynamic-range INT8 (``options.mode: dynamic``): no calibrated activation grid; each
    # FULLY_CONNECTED quantizes its input at run time, every row (token) on its own asymmetric INT8
    # grid over that row's [min(lo, 0), max(hi, 0)] (XNNPACK's qd8 kernels and TFLite's hybrid
    # kernel alike), an image at a time for a Conv; the output stays float.
    dynamic_rows: bool = False
    # How the static grid of each weighted layer's input is set from calibration: "minmax" its
    # global min and max; "mse" that range shrunk by the factor of least squared error on the
    # calibration images (``edgevit.quant.ranges``; ``options.input_ranges`` of the QDQ targets).
    input_ranges: Literal["minmax", "mse"] = "minmax"

    @property
    def tag(self) -> str:
        """A short name for the grid, e.g. ``onnxruntime-w8`` (targets with the same grid share it)."""
        extra = "" if self.smooth_alpha is None else f"-sq{self.smooth_alpha:g}"
        extra += "-u8" if self.weight_unsigned else ""
        extra += "-dynamic" if self.dynamic_rows else ""
        extra += "-mse" if self.input_ranges == "mse" else ""
        saturating = "-i16" if self.saturates else ""
        return f"{self.backend}-w{self.weight_bits}{'' if self.per_channel else '-per-tensor'}{extra}{saturating}"

    @property
    def weight_qmax(self) -> float:
        """A channel's absolute maximum in weight steps: 127 for 8 bits, ``seven_bit_qmax`` for 7;
        half the unsigned range (127.5, 63.5) for unsigned weights."""
        if self.weight_unsigned:
            return (2**self.weight_bits - 1) / 2
        return 127.0 if self.weight_bits == 8 else self.seven_bit_qmax

    @property
    def saturates(self) -> bool:
        """Whether a pair of products can leave int16 on this grid: with ``int16_pairs`` and weights
        whose largest level passes 32767 / (2 · 255), i.e. 8-bit ones (7-bit ones reach 64)."""
        return self.int16_pairs and not self.weight_unsigned and 2 * 255 * round(self.weight_qmax) > 32767

    def quantize_activation(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """``x`` fake-quantized on the per-tensor grid calibrated to [``lo``, ``hi``] (per row at run
        time, ignoring them, with ``dynamic_rows``)."""
        if self.dynamic_rows:
            return quantize_rows(x)
        scale, zero = self.activation_grid(lo, hi)
        if scale == 0:
            return torch.zeros_like(x)
        if self.activation_symmetric:
            return fake_quantize(x, scale, 0, -127, 127)
        return fake_quantize(x, scale, zero, 0, 255)

    def quantize_attention_input(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """``x``, an input of an attention matmul, fake-quantized as this backend does it."""
        if self.attention == "fused":
            return replace(self, activation_symmetric=True).quantize_activation(x, lo, hi)
        return self.quantize_activation(x, lo, hi)

    def weight_codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w`` (output channels first) on its symmetric grid, per channel or per tensor: the
        integer levels (flattened to output channels x the rest) and the step of each channel."""
        flat = w.reshape(w.shape[0], -1)
        absmax = flat.abs().amax(dim=1, keepdim=True) if self.per_channel else flat.abs().amax()
        scale = torch.where(absmax > 0, absmax / self.weight_qmax, torch.ones_like(absmax))
        bound, offset = math.ceil(self.weight_qmax), self.weight_level_offset
        codes = torch.round(flat / scale + offset) - offset if offset else torch.round(flat / scale)
        top = bound - 1 if self.weight_unsigned else bound  # 127.5 steps round to 128: clipped to 127
        return torch.clamp(codes, -bound, top), scale.expand(flat.shape[0], 1)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (output channels first) fake-quantized symmetrically, per channel or per tensor."""
        codes, scale = self.weight_codes(w)
        return (codes * scale).reshape(w.shape)

    def activation_grid(self, lo: float, hi: float) -> tuple[float, int]:
        """The (step, zero point) of the per-tensor activation grid calibrated to [``lo``, ``hi``]
        (step 0: an empty range, quantized to zeros)."""
        if self.activation_symmetric:
            return max(abs(lo), abs(hi)) / 127.0, 0
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255.0
        return scale, (round(-lo / scale) if scale else 0)


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` on asymmetric INT8 grids of its own per row, as dynamic-range kernels quantize at run
    time: a row is the last axis of a Linear's input (a token), a whole image for a Conv's; each
    grid spans the row's [min(lo, 0), max(hi, 0)] in 255 steps with zero exactly on a level."""
    dims = tuple(range(1, x.dim())) if x.dim() == 4 else (-1,)
    lo = x.detach().amin(dim=dims, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dim=dims, keepdim=True).clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
    zero = torch.clamp(torch.round(-128.0 - lo / scale), -128, 127)
    q = torch.clamp(torch.round(x / scale) + zero, -128, 127)
    y = (q - zero) * scale
    return x + (y - x).detach() if x.requires_grad else y  # straight-through in training


def fake_quantize(x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
    """``x`` rounded onto the grid ``scale * (q - zero)``, ``q`` in [``qmin``, ``qmax``]: torch's
    quantize/dequantize kernels where they take ``x`` (an order of magnitude faster than
    ``fake_quantize_per_tensor_affine`` on CPU, same values; no gradient), else that op."""
    dtype, low, high = (torch.quint8, 0, 255) if qmin >= 0 else (torch.qint8, -128, 127)
    if not x.requires_grad and x.dtype == torch.float32 and qmin >= low and qmax == high:
        with warnings.catch_warnings():  # quantized tensors are deprecated, not gone, in torch 2.14
            warnings.simplefilter("ignore", UserWarning)
            try:
                y = torch.quantize_per_tensor(x, scale, zero, dtype).dequantize()
            except (AttributeError, RuntimeError):
                y = None
        if y is not None:
            return y.clamp_(min=scale * (qmin - zero)) if qmin > low else y  # e.g. -127, not -128
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)


def onnxruntime_scheme(
    seven_bit: bool,
    per_channel: bool = True,
    int16_pairs: bool = False,
    outputs: bool = True,
    unsigned_weights: bool = False,
    input_ranges: Literal["minmax", "mse"] = "minmax",
) -> Int8Scheme:
    """ONNX Runtime's static QDQ: asymmetric UINT8 activations, symmetric INT8 weights (UINT8 ones,
    zero point 128, with ``unsigned_weights``); with ``int16_pairs``, MLAS's x86 kernels without VNNI
    (a Conv reduces over its NHWC im2col); without ``outputs``, the Linear layers' outputs stay
    float (``quantize.linear_outputs: float``)."""
    return Int8Scheme(
        "onnxruntime",
        False,
        7 if seven_bit else 8,
        per_channel,
        quantize_outputs=outputs,
        int16_pairs=int16_pairs,
        weight_unsigned=unsigned_weights,
        input_ranges=input_ranges,
    )


def openvino_scheme(
    seven_bit: bool,
    per_channel: bool = True,
    smooth_alpha: float | None = 0.5,
    int16_pairs: bool = False,
    input_ranges: Literal["minmax", "mse"] = "minmax",
) -> Int8Scheme:
    """NNCF's transformer preset: asymmetric UINT8 at the MatMul inputs only (outputs stay float),
    symmetric weights (7-bit with its overflow fix), SmoothQuant at ``smooth_alpha`` (None: off);
    with ``int16_pairs``, oneDNN's x86 kernels without VNNI (a Conv's channels in blocks of 4)."""
    return Int8Scheme(
        "openvino",
        False,
        7 if seven_bit else 8,
        per_channel,
        seven_bit_qmax=63.5,
        weight_level_offset=127,
        smooth_alpha=smooth_alpha,
        head_range_over_tokens=smooth_alpha is None,
        attention="fused",
        int16_pairs=int16_pairs,
        conv_channel_block=4,
        input_ranges=input_ranges,
    )


def tflite_scheme(per_channel: bool = True) -> Int8Scheme:
    """ai-edge-quantizer's static INT8 (``static_wi8_ai8``): asymmetric INT8 activations at each
    FULLY_CONNECTED's input and output (after its bias), symmetric per-channel INT8 weights, on a
    graph whose LayerNorm affines the converter folded into the next Linear; the attention matmuls
    (BATCH_MATMUL) like the Linear layers when in scope."""
    return Int8Scheme(
        "tflite", False, 8, per_channel, quantize_outputs=True, output_after_bias=True, folds_norms=True
    )


def tflite_dynamic_scheme(per_channel: bool = True) -> Int8Scheme:
    """ai-edge-quantizer's dynamic-range INT8 (``dynamic_wi8_afp32``): symmetric per-channel INT8
    weights on the FULLY_CONNECTED (and Conv) layers with constant weights, their inputs quantized
    per row at run time (``dynamic_rows``), float outputs; the attention matmuls stay float."""
    return Int8Scheme("tflite", False, 8, per_channel, folds_norms=True, attention="none", dynamic_rows=True)


def coreml_scheme(
    per_channel: bool = True, outputs: bool = True, input_ranges: Literal["minmax", "mse"] = "minmax"
) -> Int8Scheme:
    """coremltools W8A8: symmetric INT8 at each linear's input and output (after its bias; MIL's
    ``linear`` carries it) but the model's own output, symmetric per-channel INT8 weights; without
    ``outputs``, the linear outputs stay float (``quantize.linear_outputs: float``)."""
    return Int8Scheme(
        "coreml",
        True,
        8,
        per_channel,
        quantize_outputs=outputs,
        output_after_bias=True,
        head_output=False,
        attention="none",
        input_ranges=input_ranges,
    )


def tensorrt_scheme(
    per_channel: bool = True, outputs: bool = True, input_ranges: Literal["minmax", "mse"] = "minmax"
) -> Int8Scheme:
    """TensorRT explicit quantization: symmetric INT8 activations and weights (a GPU accumulates in
    int32, so never 7-bit); the Q/DQ come from the same ONNX Runtime quantizer, outputs included
    unless ``outputs`` is off (``quantize.linear_outputs: float``)."""
    return Int8Scheme("tensorrt", True, 8, per_channel, quantize_outputs=outputs, input_ranges=input_ranges)
