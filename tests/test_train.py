from pathlib import Path

import pytest

import edgevit.train as train_mod
from edgevit.errors import EdgeVitError
from edgevit.models.load import load
from edgevit.train import TrainConfig, train
from tests.conftest import write_image_folder

CFG = dict(
    model="vit_plus_tiny_patch8_32", model_kwargs={"depth": 1}, epochs=3, batch_size=8, warmup_epochs=1
)


def test_train_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imgs", {"dark": 12, "light": 12})
    result = train(TrainConfig(data=str(data), **CFG), tmp_path / "out", progress=False)
    assert len(result["history"]) == 3
    loaded = load(checkpoint=tmp_path / "out")
    assert loaded.config.class_names == ["dark", "light"] and loaded.config.num_classes == 2
    assert not (tmp_path / "out" / "train_state.pt").exists()


def _interrupt_after_first_epoch(cfg: TrainConfig, out: Path, monkeypatch) -> None:
    """Run training that dies during epoch 2, after epoch 1 was checkpointed."""
    real_eval, calls = train_mod.evaluate_top1, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_top1", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(train_mod, "evaluate_top1", real_eval)
    assert (out / "train_state.pt").is_file()


def test_interrupted_training_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    data = write_image_folder(tmp_path / "imgs", {"dark": 10, "light": 10})
    cfg = TrainConfig(data=str(data), **CFG)
    straight = train(cfg, tmp_path / "a", progress=False)
    _interrupt_after_first_epoch(cfg, tmp_path / "b", monkeypatch)
    real_eval, epochs_run = train_mod.evaluate_top1, []

    def counting(*args, **kwargs):
        epochs_run.append(1)
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_top1", counting)
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert len(epochs_run) == 2 + 1  # epochs 2 and 3 (epoch 1 came from the checkpoint) + the test split
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]])


def test_resuming_with_another_config_is_refused(tmp_path: Path, monkeypatch) -> None:
    data = write_image_folder(tmp_path / "imgs", {"dark": 10, "light": 10})
    cfg = TrainConfig(data=str(data), **CFG)
    _interrupt_after_first_epoch(cfg, tmp_path / "run", monkeypatch)
    with pytest.raises(EdgeVitError, match="different config"):
        train(cfg.model_copy(update={"lr": 5e-4}), tmp_path / "run", progress=False)


def test_streamed_training_follows_the_in_memory_run(tmp_path: Path, monkeypatch) -> None:
    """A set past the cache limit streams through loader workers; same seed, same losses and
    weights as preprocessing it all up front; train.json says how it ran."""
    data = write_image_folder(tmp_path / "imgs", {"dark": 12, "light": 12})
    cfg = TrainConfig(data=str(data), **CFG)
    held = train(cfg, tmp_path / "a", progress=False)
    monkeypatch.setenv("EDGEVIT_DATA_CACHE_MB", "0")
    streamed = train(cfg, tmp_path / "b", progress=False)
    assert held["data"] == "in-memory" and streamed["data"].startswith("streamed, ")
    assert [h["loss"] for h in streamed["history"]] == pytest.approx([h["loss"] for h in held["history"]])
    assert streamed["test_top1"] == held["test_top1"]
    for key in ("device", "precision", "processes", "images_per_second", "peak_rss_mb"):
        assert key in streamed, key
    assert (streamed["device"], streamed["precision"], streamed["processes"]) == ("cpu", "fp32", 1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_steps(tmp_path: Path, precision: str) -> None:
    """fit's autocast and (fp16) gradient-scaler path, exercised on the CPU (a GPU takes the same
    code with its device): finite losses, and a checkpoint that loads in fp32."""
    import math

    import torch

    from edgevit.compute import Compute

    data = write_image_folder(tmp_path / "imgs", {"dark": 8, "light": 8})
    cfg = TrainConfig(data=str(data), **CFG)
    result = train(cfg, tmp_path / "out", progress=False, compute=Compute(torch.device("cpu"), precision))  # type: ignore[arg-type]
    assert result["precision"] == precision and all(math.isfinite(h["loss"]) for h in result["history"])
    loaded = load(checkpoint=tmp_path / "out")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_shifting_moves_a_dense_map_with_its_image() -> None:
    import torch

    from edgevit.train import _shift

    mask = torch.randint(0, 6, (3, 8, 8))
    offsets = torch.tensor([[0, 4], [2, 2], [4, 1]])
    image = _shift(mask[:, None].double().expand(-1, 3, -1, -1), offsets, 2)
    moved = _shift(mask[:, None].double(), offsets, 2)[:, 0].long()
    assert torch.equal(image[:, 0].long(), moved)


@pytest.mark.parametrize(
    ("task", "head", "score"), [("segmentation", "linear", "miou"), ("depth", "linear", "delta1")]
)
def test_dense_training_on_a_dense_folder(tmp_path: Path, task: str, head: str, score: str) -> None:
    from edgevit.data.scenes import write_dense_folder

    write_dense_folder(tmp_path / "scenes", 30)
    cfg = TrainConfig(
        model="vit_plus_tiny_patch4_32",
        data=str(tmp_path / "scenes"),
        model_kwargs={"depth": 1, "task": task, "dense_head": head},
        epochs=2,
        batch_size=8,
        warmup_epochs=0,
    )
    result = train(cfg, tmp_path / "out", progress=False)
    assert result["history"][-1]["loss"] < result["history"][0]["loss"] * 1.5
    top = 100 if score == "miou" else 1  # mIoU in percent, δ1 a fraction
    assert (
        all(0 <= h[f"val_{score}"] <= top for h in result["history"]) and 0 <= result[f"test_{score}"] <= top
    )
    loaded = load(checkpoint=tmp_path / "out")
    assert loaded.config.task == task


def test_classification_data_for_a_dense_model_is_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imgs", {"dark": 4, "light": 4})
    cfg = TrainConfig(data=str(data), model_kwargs={"depth": 1, "task": "depth"}, epochs=1)
    with pytest.raises(EdgeVitError, match="is for classification, the model for depth"):
        train(cfg, tmp_path / "out", progress=False)


def test_a_linear_probe_trains_only_a_new_head_on_frozen_features(tmp_path: Path) -> None:
    """``linear_probe`` turns a headless backbone into a classifier: only ``head.*`` changes."""
    import torch

    from edgevit.models.load import config_for, create, load, save
    from edgevit.train import TrainConfig, train

    torch.manual_seed(0)
    kwargs = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}
    backbone = create("vit_small_patch16_224", num_classes=0, **kwargs)
    save(backbone.eval(), config_for("vit_small_patch16_224", backbone, model_kwargs=kwargs), tmp_path / "bb")
    cfg = TrainConfig(
        init_checkpoint=str(tmp_path / "bb"), linear_probe=True, data="digits", epochs=2, lr=1e-2
    )
    result = train(cfg, tmp_path / "probe", progress=False)
    probed = load(checkpoint=tmp_path / "probe")
    assert probed.config.num_classes == 10 and probed.config.task == "classification"
    before = backbone.state_dict()
    for name, value in probed.model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, before[name]), name
    assert result["test_top1"] > 20.0  # digits' features from a random patch embedding still separate


def test_boxes_move_with_their_shifted_images() -> None:
    import torch

    from edgevit.train import _shift, _shift_boxes

    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 4:8, 2:6] = 1.0  # an object at x 2..6, y 4..8
    boxes = torch.full((1, 3, 5), -1.0)
    boxes[0, 0] = torch.tensor([2, 4, 6, 8, 1])
    boxes[0, 1] = torch.tensor([0, 0, 1.5, 16, 0])  # a sliver at the left edge
    offsets = torch.tensor([[0, 4]])  # rows 0 (down by 2), columns 4 (left by 2) with 2 pixels of shift
    moved = _shift(image, offsets, 2)
    shifted = _shift_boxes(boxes, offsets, 2, (16, 16))
    rows, cols = torch.nonzero(moved[0, 0] > 0.5, as_tuple=True)
    assert shifted[0, 0].tolist() == [
        int(cols.min()),
        int(rows.min()),
        int(cols.max()) + 1,
        int(rows.max()) + 1,
        1,
    ]
    assert shifted[0, 0].tolist() == [0, 6, 4, 10, 1]
    assert (shifted[0, 1] == -1).all() and (shifted[0, 2] == -1).all()  # pushed out; padding stays
