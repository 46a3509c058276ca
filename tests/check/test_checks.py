import numpy as np

from edgevit.check import accuracy, gates
from edgevit.recipe.schema import Gates


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
