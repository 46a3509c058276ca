"""Distillation: the loss, a resumable run, and 2 processes under torchrun matching 1 process."""

import json
from pathlib import Path

import pytest
import torch

import edgevit.train as train_mod
from edgevit.data import DataSpec
from edgevit.models.load import load
from edgevit.recipe.schema import DistillStage
from edgevit.stages.distill import DistillConfig, distill, kd_loss
from edgevit.train import TrainConfig, train
from tests.conftest import run_cli, write_image_folder


def test_kd_loss_is_zero_only_when_the_student_matches_the_teacher() -> None:
    s = DistillStage(stage="distill", alpha=1.0, temperature=3.0)
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    assert float(kd_loss(logits, logits, labels, s)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, torch.randn(8, 5), labels, s)) > 0.01
    hard = DistillStage(stage="distill", alpha=0.0)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert float(kd_loss(logits, torch.randn(8, 5), labels, hard)) == pytest.approx(float(ce))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-block ViT-Plus trained 3 epochs on a 2-class image folder (80 images)."""
    root = tmp_path_factory.mktemp("distill")
    data = write_image_folder(root / "imgs", {"dark": 40, "light": 40})
    cfg = TrainConfig(model="vit_plus_tiny_patch8_32", model_kwargs={"depth": 1}, data=str(data), epochs=3)
    train(cfg, root / "teacher", progress=False)
    return root / "teacher", data


def _config(teacher: tuple[Path, Path], **settings) -> DistillConfig:
    ckpt, data = teacher
    stage = DistillStage(stage="distill", epochs=2, batch_size=8, warmup_epochs=0, **settings)
    return DistillConfig(
        teacher=str(ckpt), student=str(ckpt), data=DataSpec(source=str(data), split="train"), settings=stage
    )


def _interrupted_after_epoch_1(cfg: DistillConfig, out: Path, monkeypatch) -> None:
    """Run ``cfg`` into ``out`` until its epoch-2 checkpoint, which never lands (an interruption)."""
    real_save, calls = train_mod.atomic_path, []

    def dies_on_second_save(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(path)

    monkeypatch.setattr(train_mod, "atomic_path", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, out, progress=False)
    monkeypatch.setattr(train_mod, "atomic_path", real_save)
    assert (out / "train_state.pt").is_file()


def test_distill_writes_a_loadable_student_and_resumes(
    teacher: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    cfg = _config(teacher)
    straight = distill(cfg, tmp_path / "a", progress=False)
    assert len(straight["history"]) == 2 and (tmp_path / "a" / "distill.json").is_file()
    assert not (tmp_path / "a" / "train_state.pt").exists()

    _interrupted_after_epoch_1(cfg, tmp_path / "b", monkeypatch)
    resumed = distill(cfg, tmp_path / "b", progress=False)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]])
    a, b = load(checkpoint=tmp_path / "a").model, load(checkpoint=tmp_path / "b").model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_activation_checkpointing_trains_the_same_student(
    teacher: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    """Recomputing the blocks' activations in the backward pass changes memory, not the result;
    it is left out of the run's identity, so a run resumes with it switched either way."""
    import timm.models.vision_transformer as vt

    calls, real = [], vt.checkpoint_seq
    monkeypatch.setattr(vt, "checkpoint_seq", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = distill(_config(teacher), tmp_path / "plain", progress=False)
    assert not calls
    ckpt = distill(_config(teacher, activation_checkpointing=True), tmp_path / "ckpt", progress=False)
    assert calls  # the blocks ran checkpointed
    assert ckpt["settings"]["activation_checkpointing"] is True
    assert [h["loss"] for h in ckpt["history"]] == pytest.approx([h["loss"] for h in plain["history"]])
    a, b = load(checkpoint=tmp_path / "plain").model, load(checkpoint=tmp_path / "ckpt").model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert (
        DistillStage(stage="distill", activation_checkpointing=True).identity()
        == DistillStage(stage="distill").identity()
    )


def test_distillation_token_student(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    distill(_config(teacher, distill_token=True), tmp_path / "s", progress=False)
    student = load(checkpoint=tmp_path / "s")
    assert student.config.model_kwargs["distill_token"] is True
    assert student.model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)  # eval: mean of both heads


def test_two_processes_follow_one_process(teacher: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    """torchrun + DDP (gloo): each process reads and trains on half of every global batch; the
    result matches one process, with the data streamed by loader workers, and a 1-process run
    interrupted after epoch 1 resumes under 2 processes to the same weights. 48 training images in
    batches of 47: uneven halves (24 + 23), then 1 + 0 (a process with nothing to train on)."""
    ckpt, data = teacher
    args = ["distill", "--teacher", str(ckpt), "--student", str(ckpt), "--data", str(data)]
    args += ["--epochs", "2", "--batch-size", "47", "--quiet", "--json"]
    one = run_cli(*args, "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(*args, "--nproc", "2", "-o", str(tmp_path / "two"), env={"EDGEVIT_DATA_CACHE_MB": "0"})
    assert two.returncode == 0, two.stderr[-2000:]
    log = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert log["processes"] == 2 and log["data"].startswith("streamed") and log["device"] == "cpu"
    assert log["images_per_second"] > 0 and log["peak_rss_mb"] > 0 and log["precision"] == "fp32"

    stage = DistillStage(stage="distill", epochs=2, batch_size=47)  # what the options above make
    cfg = DistillConfig(
        teacher=str(ckpt), student=str(ckpt), data=DataSpec(source=str(data), split="train"), settings=stage
    )
    _interrupted_after_epoch_1(cfg, tmp_path / "resumed", monkeypatch)
    resumed = run_cli(*args, "--nproc", "2", "-o", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "resumed" / "distill.json").read_text())["processes"] == 2
    a = load(checkpoint=tmp_path / "one").model
    for other in ("two", "resumed"):
        b = load(checkpoint=tmp_path / other).model
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-3, msg=f"{other}: {name}")
