"""The shipped models (the default feature-splatting model and the colour model ``colour``): load
without code execution, match the hashes the README pins, and beat bicubic on real data by the
margins the model card reports.

Set5 is evaluation data (never used for training); the model card in README.md lists the full
Set5/Set14 table at x2, x3, x4, x6 and x3.5 (bench/results/sr-colour-vs-feature-*.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsplat2d.eval.cli import main as eval_main
from gsplat2d.sr.feature import GaussianFeatureSR
from gsplat2d.sr.model import (
    SHIPPED_MODELS,
    Pixel2GaussianSR,
    default_model_path,
    load_checkpoint,
    load_model,
    resolve_model_path,
    shipped_model_path,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_the_default_is_the_feature_model_and_tiny_is_selectable(tmp_path, monkeypatch):
    assert default_model_path() == shipped_model_path("feature")
    assert isinstance(load_model(None), GaussianFeatureSR)
    assert isinstance(load_model("colour"), Pixel2GaussianSR)
    assert resolve_model_path("colour") == shipped_model_path("colour")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "colour").write_bytes(b"x")  # an existing file of that name is the user's file
    assert resolve_model_path("colour") == "colour"


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_weights_are_small_and_documented(name):
    path = Path(shipped_model_path(name))
    assert path.stat().st_size < 4 * 2**20
    ck = load_checkpoint(path)
    card = json.loads(ck["model_card"])
    assert "Set5" in card["trained_on"] and "never" in card["trained_on"]  # names what was excluded
    assert card["steps"] > 0


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_weights_match_the_model_card_hash(name):
    """The numbers in the model card belong to exactly these bytes: README pins their sha256."""
    import hashlib
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    file = re.escape(SHIPPED_MODELS[name])
    pinned = re.search(file + r"`\**\s*\(.*?sha256\s+`([0-9a-f]{64})`", readme, re.S)
    assert pinned, f"README's model card does not pin the sha256 of {SHIPPED_MODELS[name]}"
    digest = hashlib.sha256(Path(shipped_model_path(name)).read_bytes()).hexdigest()
    assert digest == pinned.group(1)


# Set5 Y-PSNR at x2 / x4 as the model cards report them (feature: bench/results/sr-feature-
# 48x6-vs-previous-amd-epyc-2026-12-07.json, 2-core AMD EPYC; colour: bench/results/sr-colour-
# vs-feature-intel-xeon-2026-12-02.json, 2-core Intel Xeon; torch 2.13 CPU). Margins leave room
# for other CPUs' float noise.
CARD_SET5 = {"feature": (36.999, 31.328), "colour": (36.538, 30.198)}


@pytest.mark.skipif(not (DATA / "Set5" / "HR").is_dir(), reason=f"needs the shared data: {DATA / 'Set5'} not present")
@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_model_beats_bicubic_on_set5(tmp_path, capsys, name):
    out = tmp_path / "set5.json"
    rc = eval_main(["--benchmark", "--model_path", name, "--data_path", str(DATA / "Set5"), "--scales", "2,4",
                    "--json", str(out)])
    assert rc == 0
    rows = {r["scale"]: r for r in json.loads(out.read_text())["results"]}
    assert rows[2.0]["bicubic"]["psnr"] == pytest.approx(33.6586, abs=2e-3)
    assert rows[4.0]["bicubic"]["psnr"] == pytest.approx(28.4235, abs=2e-3)
    assert rows[2.0]["model"]["psnr"] == pytest.approx(CARD_SET5[name][0], abs=0.02)
    assert rows[4.0]["model"]["psnr"] == pytest.approx(CARD_SET5[name][1], abs=0.02)
    assert rows[2.0]["delta_psnr"] > 1.0 and rows[4.0]["delta_psnr"] > 1.0
