"""Evaluation bundles written and read a batch at a time."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevit.agent import AgentError
from edgevit.check.bundle import open_bundle, write_bundle

REPO = Path(__file__).resolve().parents[2]


def _arrays(n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 3, 4, 4), dtype=np.float32), np.arange(n), rng.random((n, 5), dtype=np.float32)


def test_a_bundle_written_in_batches_is_an_npz_and_reads_by_slices(tmp_path: Path) -> None:
    x, labels, logits = _arrays()
    path = tmp_path / "b.npz"
    write_bundle(path, 10, (3, 4, 4), ((x[i : i + 3], logits[i : i + 3]) for i in range(0, 10, 3)), labels)
    with np.load(path) as npz:
        assert np.array_equal(npz["inputs"], x) and np.array_equal(npz["labels"], labels)
        assert np.array_equal(npz["reference_logits"], logits)
    inputs, read_labels, read_logits = open_bundle(path)
    assert len(inputs) == 10 and inputs.shape == (10, 3, 4, 4)
    assert np.array_equal(inputs[2:7], x[2:7]) and np.array_equal(inputs[:], x)
    assert np.array_equal(inputs[-1], x[-1]) and np.array_equal(np.asarray(inputs), x)
    assert inputs[8:20].shape == (2, 3, 4, 4) and inputs[:3].flags.writeable
    assert np.array_equal(read_labels, labels) and np.array_equal(read_logits, logits)
    with pytest.raises(TypeError):
        inputs[::2]
    with pytest.raises(ValueError, match="9 inputs written, 10 announced"):
        write_bundle(tmp_path / "short.npz", 10, (3, 4, 4), [(x[:9], logits[:9])], labels)


def test_a_dense_bundle_spools_its_maps_and_outputs_and_reads_them_by_slices(tmp_path: Path) -> None:
    from edgevit.check.bundle import open_dense

    rng = np.random.default_rng(1)
    x = rng.random((7, 3, 4, 4), dtype=np.float32)
    maps = rng.integers(0, 6, (7, 4, 4))
    outputs = rng.random((7, 6, 4, 4), dtype=np.float32)
    path = tmp_path / "dense.npz"
    batches = ((x[i : i + 3], outputs[i : i + 3], maps[i : i + 3]) for i in range(0, 7, 3))
    write_bundle(path, 7, (3, 4, 4), batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.npz"]  # the spools are gone
    with np.load(path) as npz:  # still the np.savez layout
        assert np.array_equal(npz["labels"], maps) and np.array_equal(npz["reference_logits"], outputs)
    inputs, read_maps, read_outputs = open_dense(path)
    assert np.array_equal(read_maps[2:5], maps[2:5]) and np.array_equal(read_outputs[5:], outputs[5:])
    assert read_outputs.shape == (7, 6, 4, 4) and np.array_equal(inputs[:], x)


def test_a_classification_bundle_is_byte_for_byte_np_savez(tmp_path: Path) -> None:
    x, labels, logits = _arrays()
    write_bundle(
        tmp_path / "b.npz",
        10,
        (3, 4, 4),
        ((x[i : i + 4], logits[i : i + 4]) for i in range(0, 10, 4)),
        labels,
    )
    np.savez(tmp_path / "s.npz", inputs=x, labels=labels, reference_logits=logits)
    import zipfile

    with zipfile.ZipFile(tmp_path / "b.npz") as a, zipfile.ZipFile(tmp_path / "s.npz") as b:
        assert [i.filename for i in a.infolist()] == [i.filename for i in b.infolist()]
        for name in ("inputs.npy", "labels.npy", "reference_logits.npy"):
            assert a.read(name) == b.read(name), name


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_bundles_np_savez_wrote_still_read(tmp_path: Path, save) -> None:
    x, labels, logits = _arrays()
    save(tmp_path / "old.npz", inputs=x, labels=labels, reference_logits=logits)
    inputs, _, _ = open_bundle(tmp_path / "old.npz")
    assert np.array_equal(inputs[3:9], x[3:9]) and len(inputs) == 10


def test_a_bundle_without_inputs_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", labels=np.arange(3))
    with pytest.raises(AgentError, match="has no inputs"):
        open_bundle(tmp_path / "b.npz")


def test_scoring_a_bundle_larger_than_memory_holds_one_batch(tmp_path: Path) -> None:
    """The agent reads a 400 MB bundle (660 images at 224 px) a batch at a time: its peak RSS
    stays far below the bundle's size (a device with 1 GB free scores thousands of images)."""
    n, shape = 660, (3, 224, 224)
    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    batches = (
        (rng.random((60, *shape), dtype=np.float32), np.zeros((60, 10), np.float32)) for _ in range(11)
    )
    write_bundle(path, n, shape, batches, np.zeros(n, np.int64))
    assert path.stat().st_size > 390e6
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import agent\n"
        "x, labels, ref = agent.open_bundle(Path(sys.argv[2])); total = 0.0\n"
        "for i in range(0, len(x), 16): total += float(x[i:i+16].sum())\n"
        "print(int(agent.peak_rss_mb()), len(x))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "edgevit"), str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    path.unlink()  # 400 MB: not left for pytest's kept temporary folders
    peak_mb, count = (int(v) for v in out.stdout.split())
    assert count == n and peak_mb < 150, out.stdout
