"""Export a torch model to ONNX, the single hand-off format for every backend."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from edgevit.errors import LoweringError
from edgevit.stages.export_cache import cached, export_key, store
from edgevit.targets.base import INPUT_NAME, OUTPUT_NAME

OPSET = 18  # opset 23 would fuse attention into one Attention op that quantizers skip
MAX_BATCH = 4096


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], out: Path) -> Path:
    """Export ``model`` (eval mode) to ``out`` with a dynamic batch dimension and weights inline
    (a copy of the same export where ``edgevit.stages.export_cache`` holds one)."""
    model = model.eval()
    key = export_key(model, input_size, OPSET)
    if cached(key, out):
        return out
    _export(model, input_size, out)
    store(key, out)
    return out


def _export(model: nn.Module, input_size: tuple[int, int, int], out: Path) -> None:
    example = torch.zeros(2, *input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    sink = io.StringIO()
    # The exporter prints progress lines on stdout and warnings through logging; keep them quiet.
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
            )
    except Exception as exc:
        tail = sink.getvalue().strip().splitlines()[-1:] or [""]
        raise LoweringError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]} {tail[0]}") from exc
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
    if program is None:
        raise LoweringError("ONNX export returned nothing")
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
