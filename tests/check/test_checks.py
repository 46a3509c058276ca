import numpy as np
import pytest

from edgevit.check import accuracy, gates, latency
from edgevit.recipe.schema import Gates
from edgevit.targets import Runner


def test_compare_reports_drop_agreement_cosine_sqnr() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)).astype(np.float32)
    labels = ref.argmax(1)
    same = accuracy.compare(ref, labels, ref)
    assert same.top1 == 100.0 and same.top1_drop == 0.0 and same.agreement == 1.0
    assert same.cosine > 0.999999
    noisy = accuracy.compare(ref + rng.normal(0, 0.5, ref.shape).astype(np.float32), labels, ref)
    assert noisy.top1_drop > 0 and noisy.agreement < 1 and noisy.cosine < 0.99 and 0 < noisy.sqnr_db < 20


def test_gates_pass_fail_and_skipped() -> None:
    ok = {
        "name": "t",
        "status": "ok",
        "accuracy": {"top1_drop": 0.5, "cosine": 0.9},
        "latency_ms": {"p50": 3.0},
    }
    res = {
        g.name: g.passed
        for g in gates.evaluate(ok, Gates(max_top1_drop=1.0, min_cosine=0.95, max_latency_p50_ms=5))
    }
    assert res == {"max_top1_drop": True, "min_cosine": False, "max_latency_p50_ms": True}
    skipped = {"name": "s", "status": "skipped"}
    assert all(g.passed for g in gates.evaluate(skipped, Gates()))
    assert not any(g.passed for g in gates.evaluate(skipped, Gates(fail_on_skipped=True)))
    failed = {"name": "f", "status": "failed"}
    assert not any(g.passed for g in gates.evaluate(failed, Gates()))


def test_compression_gate_checks_the_last_stage() -> None:
    from edgevit.check.gates import evaluate_stages
    from edgevit.recipe.schema import Gates

    stages = [{"step": "stages/0-prune", "top1_drop": 4.0}, {"step": "stages/1-distill", "top1_drop": 0.6}]
    (ok,) = evaluate_stages(stages, Gates(max_compression_top1_drop=1.0))
    assert ok.passed and ok.value == 0.6 and ok.target == "stage:stages/1-distill"
    (bad,) = evaluate_stages(stages[:1], Gates(max_compression_top1_drop=1.0))
    assert not bad.passed
    assert (
        evaluate_stages([], Gates()) == []
        and evaluate_stages(stages, Gates(max_compression_top1_drop=None)) == []
    )


class _Echo(Runner):
    """A runner that returns 10 logits per image (no backend)."""

    def _load(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 10), np.float32)


class _Simulated(_Echo):
    simulated = "numpy-stand-in"


def test_no_latency_figure_comes_from_a_simulated_runner(tmp_path) -> None:
    sample = np.zeros((1, 3, 8, 8), np.float32)
    with _Echo(tmp_path / "a", 1, (3, 8, 8)) as real, _Simulated(tmp_path / "b", 1, (3, 8, 8)) as sim:
        assert latency.measure(real, sample, 1, 5).runs == 5
        both = latency.interleaved({"real": (real, sample)}, rounds=3, runs=4, warmup=1)
        assert len(both["real"].round_p50s) == 3 and both["real"].p50 >= 0
        with pytest.raises(ValueError, match="numpy-stand-in simulation"):
            latency.measure(sim, sample, 1, 5)
        with pytest.raises(ValueError, match="not a latency"):
            latency.interleaved({"real": (real, sample), "sim": (sim, sample)}, rounds=1, runs=1, warmup=0)


def test_every_simulated_target_is_reported_without_latency(tmp_path, tiny_checkpoint) -> None:
    """Through a build: a target whose runner simulates its backend gets no latency_ms."""
    from edgevit.pipeline import build
    from edgevit.recipe.loader import validate_recipe
    from edgevit.targets import TARGETS
    from tests.conftest import tiny_recipe

    targets = [
        {"name": name, "backend": name, "precision": "int8"}
        for name in TARGETS.names()
        if TARGETS.get(name).availability().available and TARGETS.get(name).runner_type(None).simulated
    ]
    if not targets:
        pytest.skip("no simulated backend is installed here")
    recipe = validate_recipe(tiny_recipe(tiny_checkpoint, targets, evaluation=8), "test", tmp_path)
    report = build(recipe, tmp_path / "build")
    for t in report.data["targets"]:
        assert t["latency_ms"] is None and t["where"].startswith("simulated:"), t
