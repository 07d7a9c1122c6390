"""Bounded encode memory: a large image is encoded in pieces with a halo of the
network's receptive radius, and the field equals the whole-image encode."""

from __future__ import annotations

import pytest
import torch

from gsplat2d.sr.model import load_model
from gsplat2d.sr.rendering import encode_image, receptive_radius


@pytest.mark.parametrize("name", ["feature", "colour"])
@pytest.mark.parametrize("size, tile", [((53, 70), 24), ((41, 29), 16), ((33, 90), 40)],
                         ids=["53x70-tile24", "41x29-tile16", "33x90-tile40"])
def test_windowed_encode_equals_the_whole(name, size, tile):
    m = load_model(name).eval()
    lr = torch.rand(3, *size, generator=torch.Generator().manual_seed(3))  # rough: every pixel matters
    whole = encode_image(m, lr, tile=0)
    parts = encode_image(m, lr, tile=tile)
    assert parts.source_size == whole.source_size and parts.mode == whole.mode
    for a, b in ((parts.means, whole.means), (parts.covariances, whole.covariances),
                 (parts.colors, whole.colors), (parts.opacities, whole.opacities)):
        assert a.shape == b.shape
        # float32 convolutions of other sizes: worst observed 1.1e-6 (often bit-identical)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    # a halo three pixels short of the receptive radius is not enough: the pieces then differ
    import gsplat2d.sr.rendering as rendering

    real = rendering.receptive_radius
    try:
        rendering.receptive_radius = lambda model: real(model) - 3
        short = encode_image(m, lr, tile=tile)
    finally:
        rendering.receptive_radius = real
    # observed: colour model 8.4e-5 .. 9.1e-5, the 48 x 6 feature default 1.45e-5 .. 3.9e-5 (the
    # bound counts every convolution in series, so its last pixels weigh little); 4x the tolerance
    # of the equality above, so a short halo cannot pass as rounding
    assert float((short.colors - whole.colors).abs().max()) > 8e-6


def test_receptive_radius_counts_every_convolution():
    m = load_model("feature")
    n3 = sum(1 for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3))
    assert receptive_radius(m) == n3 >= 10
