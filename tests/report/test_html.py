"""report.html is self-contained and renders its plots in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgevit
from tests.conftest import tiny_recipe, write_recipe

pytest.importorskip("onnxruntime")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def build(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    targets = [
        {"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32"},
        {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
    ]
    edgevit.build(
        write_recipe(root / "recipe.yaml", tiny_recipe(tiny_checkpoint, targets, name="html")), root / "b"
    )
    return root / "b"


def test_report_html_is_self_contained_and_listed(build: Path) -> None:
    page = (build / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2  # accuracy vs latency, and ort-int8's per-layer error
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # nothing from the network
    assert "[report.html](report.html)" in (build / "report.md").read_text()
    manifest = (build / "manifest.json").read_text()
    assert '"report.html"' in manifest


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: tools/test.sh installs it (apt-get install chromium)"
)
def test_report_html_renders_with_its_plots_in_chromium(build: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--window-size=1200,2200", f"--screenshot={shot}", (build / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2200, 1200)
    # The plots' points and bars: the report's red (#b00020) and blue (#1f5fbf), only drawn in images.
    red = np.all(np.abs(pixels - [0xB0, 0x00, 0x20]) < 24, axis=-1).sum()
    blue = np.all(np.abs(pixels - [0x1F, 0x5F, 0xBF]) < 24, axis=-1).sum()
    assert blue > 2000 and red > 100, (blue, red)
