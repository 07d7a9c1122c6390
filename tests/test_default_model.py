"""The shipped default model: loads without code execution, and beats bicubic on real data.

Set5 is evaluation data (never used for training); the model card in README.md lists the full
Set5/Set14 table at x2, x3, x4, x6 and x3.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsplat2d.eval.cli import main as eval_main
from gsplat2d.sr.model import default_model_path, load_checkpoint

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_shipped_weights_are_small_and_documented():
    path = Path(default_model_path())
    assert path.stat().st_size < 4 * 2**20
    ck = load_checkpoint(path)
    card = json.loads(ck["model_card"])
    assert "Set5" in card["trained_on"] and "never" in card["trained_on"]  # names what was excluded
    assert card["steps"] > 0


def test_shipped_weights_match_the_model_card_hash():
    """The numbers in the model card belong to exactly these bytes: README pins their sha256."""
    import hashlib
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    pinned = re.search(r"gaussian_sr_tiny\.pth` \(.*?sha256 `([0-9a-f]{64})`", readme, re.S)
    assert pinned, "README's model card does not pin the weights' sha256"
    digest = hashlib.sha256(Path(default_model_path()).read_bytes()).hexdigest()
    assert digest == pinned.group(1)


@pytest.mark.skipif(not (DATA / "Set5" / "HR").is_dir(), reason="shared Set5 data not present")
def test_shipped_model_beats_bicubic_on_set5(tmp_path, capsys):
    out = tmp_path / "set5.json"
    rc = eval_main(["--benchmark", "--data_path", str(DATA / "Set5"), "--scales", "2,4", "--json", str(out)])
    assert rc == 0
    rows = {r["scale"]: r for r in json.loads(out.read_text())["results"]}
    # Measured 2026-11-26 (2-core AMD EPYC, torch 2.13 CPU): bicubic 33.6586 / 28.4235 dB,
    # model 36.5408 / 30.1953 dB (+2.88 / +1.77). Margins leave room for other CPUs' float noise.
    assert rows[2.0]["bicubic"]["psnr"] == pytest.approx(33.6586, abs=2e-3)
    assert rows[4.0]["bicubic"]["psnr"] == pytest.approx(28.4235, abs=2e-3)
    assert rows[2.0]["model"]["psnr"] == pytest.approx(36.5408, abs=0.02)
    assert rows[4.0]["model"]["psnr"] == pytest.approx(30.1953, abs=0.02)
    assert rows[2.0]["delta_psnr"] > 1.0 and rows[4.0]["delta_psnr"] > 1.0
