"""Where training computes: device and precision choice, checked on CPU with CUDA's answers faked."""

import pytest
import torch

from edgevit import compute
from edgevit.compute import Compute, resolve
from edgevit.errors import EdgeVitError


def test_the_cpu_trains_in_fp32_over_gloo() -> None:
    c = resolve("cpu")
    assert c == Compute(torch.device("cpu"), "fp32") and c.distributed_backend == "gloo"
    assert c.scaler() is None and c.describe() == {"device": "cpu", "precision": "fp32"}
    with pytest.raises(EdgeVitError, match="--precision bf16 trains with autocast on a GPU"):
        resolve("cpu", "bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused() -> None:
    assert resolve("auto").device.type == "cpu"
    with pytest.raises(EdgeVitError, match="torch sees no CUDA GPU") as err:
        resolve("cuda:0")
    assert "--device cpu" in str(err.value)
    with pytest.raises(EdgeVitError, match="is not auto, cpu, cuda or cuda:N"):
        resolve("gpu")


@pytest.mark.parametrize("bf16", [True, False])
def test_on_a_gpu_each_torchrun_process_takes_its_local_rank_in_mixed_precision(
    monkeypatch, bf16: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setenv("LOCAL_RANK", "2")
    c = resolve("auto")
    assert c.device == torch.device("cuda", 2) and c.distributed_backend == "nccl"
    assert c.precision == ("bf16" if bf16 else "fp16")
    assert resolve("cuda:1").device == torch.device("cuda", 1)
    assert resolve("cuda", "fp32").precision == "fp32"
    with pytest.raises(EdgeVitError, match="has 4 GPU"):
        resolve("cuda:7")
    if not bf16:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
        with pytest.raises(EdgeVitError, match="Tesla T4 has no bf16"):
            resolve("cuda", "bf16")


def test_autocast_and_scaler_follow_the_precision() -> None:
    assert Compute(torch.device("cpu"), "fp32").autocast().__class__.__name__ == "nullcontext"
    cast = Compute(torch.device("cuda", 0), "bf16").autocast()
    assert isinstance(cast, torch.autocast) and cast.fast_dtype == torch.bfloat16
    assert Compute(torch.device("cuda", 0), "fp16").autocast().fast_dtype == torch.float16
    assert Compute(torch.device("cuda", 0), "bf16").scaler() is None


def test_peak_memory_is_reported_in_mib() -> None:
    facts = compute.peak_memory(resolve("cpu"))
    assert 10 < facts["peak_rss_mb"] < 100_000 and "peak_gpu_mb" not in facts


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "distill"])
def test_asking_for_a_gpu_this_machine_lacks_is_one_line(command: str, tmp_path) -> None:
    from tests.conftest import run_cli

    extra = ["--teacher", "t", "--student", "s"] if command == "distill" else []
    out = run_cli(command, *extra, "--device", "cuda", "--nproc", "2", "-o", str(tmp_path / "o"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "torch sees no CUDA GPU" in out.stderr and "--device cpu" in out.stderr
