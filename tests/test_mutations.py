"""Tests of the tests: for every rule of the definition, a reference that breaks it
(``tests/reference_mutants.py``) must make at least one real test fail. Each case runs a real test function of the suite
against the mutated reference (torch backend: the backends agree to ~1e-7) and expects its
assertion to fire; the same test passes against the true reference in the normal run.

| rule broken | caught by |
|---|---|
| stop rule off by one (the crossing Gaussian composites) | test_stop_rule_at_every_chunk_position (6.8e-5 vs 1e-6 tolerance) |
| no 1/255 cutoff | test_matches_dense_reference (N300 scene, both modes) |
| no 0.99 clamp (alpha) | test_weights_at_their_clamp[alpha] |
| no clamp of a weight at 1 (sum) | test_weights_at_their_clamp[sum] |
| pixel sampled at its corner, not +0.5 | test_matches_dense_reference |
"""

from __future__ import annotations

import pytest

from gsplat2d import reference
import test_rasterize_forward as fwd
from reference_mutants import MUTANTS, mutated_dense_rasterize

CASES = [
    ("stop_off_by_one", lambda: fwd.test_stop_rule_at_every_chunk_position("torch")),
    ("no_min_weight", lambda: fwd.test_matches_dense_reference("torch", fwd.CASES[0], "alpha-bg")),
    ("no_min_weight", lambda: fwd.test_matches_dense_reference("torch", fwd.CASES[0], "sum")),
    ("no_alpha_clamp", lambda: fwd.test_weights_at_their_clamp("torch", "alpha")),
    ("no_sum_clamp", lambda: fwd.test_weights_at_their_clamp("torch", "sum")),
    ("pixel_corner", lambda: fwd.test_matches_dense_reference("torch", fwd.CASES[1], "alpha-bg")),
]


def test_every_rule_has_a_mutant_case():
    assert {m for m, _ in CASES} == set(MUTANTS)


@pytest.mark.parametrize("mutant,run", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_mutated_reference_fails_a_real_test(monkeypatch, mutant, run):
    monkeypatch.setattr(fwd, "dense_rasterize", mutated_dense_rasterize(mutant))
    with pytest.raises(AssertionError, match="max err"):
        run()


def test_off_by_one_stop_is_far_outside_the_tolerance():
    """The off-by-one stop rule differs from the true one by 6.8e-5 on the stop-rule scene: the
    old single tolerance (1e-4) let it pass; the scene's own (1e-6) does not."""
    import torch

    w, h = 17, 13
    s = fwd.make_scene((), 60, w, h, 3, seed=111, margin=0.0, min_radius=6.0, max_radius=14.0,
                       opacity=(0.3, 0.6))
    s["means"] = s["means"] * 0.3 + torch.tensor([0.35 * w, 0.35 * h])
    s["colors"][40:] = 50.0
    args = (s["means"], s["conics"], s["colors"], s["opacities"], w, h, "alpha", s["background"])
    good = reference.dense_rasterize(*args)[0]
    bad = mutated_dense_rasterize("stop_off_by_one")(*args)[0]
    gap = (good - bad).abs().max().item()
    assert fwd.ATOL_STOP < gap < 1e-4, gap


def test_gradient_check_catches_errors_in_small_entries():
    """A backward that gets only the small gradients wrong (here: doubles every entry below 1e-3
    of the largest) passed the old max-relative check (|g - g_ref| <= 1e-3 max|g_ref|); the
    elementwise check in conftest fails it, and passes the true gradient."""
    import torch

    from conftest import assert_grad_close, make_scene

    s = make_scene((), 40, 17, 13, 3, seed=1, max_radius=12)
    means = s["means"].double().requires_grad_(True)
    img, alp = reference.dense_rasterize(means, s["conics"], s["colors"], s["opacities"], 17, 13)
    (img.sum() + alp.sum()).backward()
    g = means.grad
    small = g.abs() < 1e-3 * g.abs().max()
    assert small.sum() > 0
    wrong = torch.where(small, 2 * g, g)
    assert (wrong - g).abs().max() <= 1e-3 * g.abs().max()  # the old check would pass it
    assert_grad_close(g.float(), g)
    with pytest.raises(AssertionError, match="elementwise"):
        assert_grad_close(wrong, g)
