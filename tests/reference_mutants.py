"""Deliberately wrong variants of the float64 reference, for tests of the tests
(``tests/test_mutations.py``): each breaks one rule of the definition by replacing one of
:mod:`gsplat2d.reference`'s rule constants (or its stop rule) for the length of one call.
"""

from __future__ import annotations

import contextlib
import math

import torch

from gsplat2d import reference


def _stopped_one_late(a, n_dim):
    """The Gaussian whose factor takes T to <= 1e-4 still composites (the stop mask shifted by one)."""
    stopped = torch.cumprod(1.0 - a, dim=n_dim) <= reference.T_STOP
    first = torch.zeros_like(stopped.narrow(n_dim, 0, 1))
    return torch.cat([first, stopped.narrow(n_dim, 0, stopped.shape[n_dim] - 1)], dim=n_dim)


#: name -> {reference attribute: its wrong value}
MUTANTS = {
    "stop_off_by_one": {"_stopped": _stopped_one_late},
    "no_min_weight": {"MIN_WEIGHT": 0.0},  # no 1/255 cutoff
    "no_alpha_clamp": {"ALPHA_MAX": 0.999999},  # alpha mode without the 0.99 clamp
    "no_sum_clamp": {"SUM_MAX": math.inf},  # sum mode without the clamp of a weight at 1
    "pixel_corner": {"PIXEL_CENTRE": 0.0},  # pixel (x, y) sampled at its corner, not at +0.5
}


@contextlib.contextmanager
def _patched(changes: dict):
    old = {k: getattr(reference, k) for k in changes}
    try:
        for k, v in changes.items():
            setattr(reference, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(reference, k, v)


def mutated_dense_rasterize(name: str):
    """``reference.dense_rasterize`` with mutant ``name``'s rule broken during each call (the other
    helpers of the reference, e.g. ``ambiguous_pixels``, keep the true rules)."""
    changes = MUTANTS[name]

    def dense(*args, **kwargs):
        with _patched(changes):
            return reference.dense_rasterize(*args, **kwargs)

    return dense
