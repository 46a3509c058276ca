import copy

import torch

from edgevit.models.load import create
from edgevit.quant.outliers import add_outliers, outlier_pairs


def test_outliers_keep_the_function_and_make_the_channels_large() -> None:
    torch.manual_seed(0)
    model = create("vit_plus_tiny_patch8_32", num_classes=10, depth=2).eval()
    changed = copy.deepcopy(model)
    applied = add_outliers(changed, channels=3, seed=1)
    pairs = outlier_pairs(model)
    assert [p.norm for p in pairs] == [
        "blocks.0.norm1",
        "blocks.0.norm2",
        "blocks.1.norm1",
        "blocks.1.norm2",
        "norm",
    ]
    assert set(applied) == {p.norm for p in pairs}
    assert all(len(c) == 3 and all(30 <= f <= 60 for f in c.values()) for c in applied.values())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), changed(x)
        # the same logits (float rounding only) ...
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        # ... while the LayerNorm outputs now carry channels tens of times the others
        captured: dict[str, torch.Tensor] = {}
        norm = changed.get_submodule("blocks.0.norm2")
        handle = norm.register_forward_hook(lambda _m, _i, o: captured.setdefault("y", o))
        changed(x)
        handle.remove()
    per_channel = captured["y"].abs().amax(dim=(0, 1))
    picked = list(applied["blocks.0.norm2"])
    others = [c for c in range(per_channel.numel()) if c not in picked]
    assert float(per_channel[picked].min()) > 10 * float(per_channel[others].median())


def test_outliers_are_seeded() -> None:
    model = create("vit_plus_tiny_patch8_32", num_classes=10, depth=1)
    assert add_outliers(copy.deepcopy(model), seed=3) == add_outliers(copy.deepcopy(model), seed=3)
    assert add_outliers(copy.deepcopy(model), seed=3) != add_outliers(copy.deepcopy(model), seed=4)
