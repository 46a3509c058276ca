"""What INT8 means on each backend: one definition of the grids the targets build.

Each backend's INT8 artifact quantizes the inputs of the layers in the recipe's scope per tensor
(ranges from calibration) and their weights per output channel, symmetrically. They differ in the
activation grid: ONNX Runtime and OpenVINO use asymmetric UINT8 (the range stretched to include
0), TensorRT symmetric INT8 (explicit-quantization Q/DQ), and in the weight width: 7 bits where
``targets/cpu.py`` decides an x86 CPU without VNNI would saturate. The simulator
(``edgevit.quant.simulate``) computes in torch what these grids do to a model.
"""

from __future__ import annotations

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
    # What ``matmul_scope: all`` quantizes of the attention matmuls (q@kᵀ, attn@v): "all" both
    # inputs of both (and their outputs with ``quantize_outputs``); "fused" OpenVINO's fused
    # ScaledDotProductAttention: q, and k where it is not pooled, on symmetric INT8 grids (NNCF's
    # rule for its inputs, read from the artifacts' FakeQuantize ranges); "none" nothing (coremltools
    # quantizes the activations of conv, linear, pooling and add only).
    attention: Literal["all", "fused", "none"] = "all"

    @property
    def tag(self) -> str:
        """A short name for the grid, e.g. ``onnxruntime-w8`` (targets with the same grid share it)."""
        smooth = "" if self.smooth_alpha is None else f"-sq{self.smooth_alpha:g}"
        return f"{self.backend}-w{self.weight_bits}{'' if self.per_channel else '-per-tensor'}{smooth}"

    @property
    def weight_qmax(self) -> int:
        """Largest weight level: 127 for 8 bits, 64 for 7 (ONNX Runtime's reduce_range grid)."""
        return 127 if self.weight_bits == 8 else 64

    def quantize_activation(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """``x`` fake-quantized on the per-tensor grid calibrated to [``lo``, ``hi``]."""
        if self.activation_symmetric:
            scale = max(abs(lo), abs(hi)) / 127.0
            if scale == 0:
                return torch.zeros_like(x)
            return fake_quantize(x, scale, 0, -127, 127)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255.0
        if scale == 0:
            return torch.zeros_like(x)
        return fake_quantize(x, scale, round(-lo / scale), 0, 255)

    def quantize_attention_input(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """``x``, an input of an attention matmul, fake-quantized as this backend does it."""
        if self.attention == "fused":
            return replace(self, activation_symmetric=True).quantize_activation(x, lo, hi)
        return self.quantize_activation(x, lo, hi)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (output channels first) fake-quantized symmetrically, per channel or per tensor."""
        flat = w.reshape(w.shape[0], -1)
        absmax = flat.abs().amax(dim=1, keepdim=True) if self.per_channel else flat.abs().amax()
        scale = torch.where(absmax > 0, absmax / self.weight_qmax, torch.ones_like(absmax))
        q = torch.clamp(torch.round(flat / scale), -self.weight_qmax, self.weight_qmax) * scale
        return q.reshape(w.shape)


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


def onnxruntime_scheme(seven_bit: bool, per_channel: bool = True) -> Int8Scheme:
    """ONNX Runtime's static QDQ: asymmetric UINT8 activations, symmetric INT8 weights."""
    return Int8Scheme("onnxruntime", False, 7 if seven_bit else 8, per_channel, quantize_outputs=True)


def openvino_scheme(
    seven_bit: bool, per_channel: bool = True, smooth_alpha: float | None = 0.5
) -> Int8Scheme:
    """NNCF's transformer preset: asymmetric UINT8 at the MatMul inputs only (outputs stay float),
    symmetric weights (7-bit with its overflow fix), SmoothQuant at ``smooth_alpha`` (None: off)."""
    return Int8Scheme(
        "openvino", False, 7 if seven_bit else 8, per_channel, smooth_alpha=smooth_alpha, attention="fused"
    )


def tflite_scheme(per_channel: bool = True) -> Int8Scheme:
    """ai-edge-quantizer's static INT8 (``static_wi8_ai8``): asymmetric INT8 activations at each
    FULLY_CONNECTED's input and output (after its bias), symmetric per-channel INT8 weights, on a
    graph whose LayerNorm affines the converter folded into the next Linear; the attention matmuls
    (BATCH_MATMUL) like the Linear layers when in scope."""
    return Int8Scheme(
        "tflite", False, 8, per_channel, quantize_outputs=True, output_after_bias=True, folds_norms=True
    )


def coreml_scheme(per_channel: bool = True) -> Int8Scheme:
    """coremltools W8A8: symmetric INT8 at each linear's input and output (after its bias; MIL's
    ``linear`` carries it) but the model's own output, symmetric per-channel INT8 weights."""
    return Int8Scheme(
        "coreml",
        True,
        8,
        per_channel,
        quantize_outputs=True,
        output_after_bias=True,
        head_output=False,
        attention="none",
    )


def tensorrt_scheme(per_channel: bool = True) -> Int8Scheme:
    """TensorRT explicit quantization: symmetric INT8 activations and weights (a GPU accumulates in
    int32, so never 7-bit); the Q/DQ come from the same ONNX Runtime quantizer, outputs included."""
    return Int8Scheme("tensorrt", True, 8, per_channel, quantize_outputs=True)
