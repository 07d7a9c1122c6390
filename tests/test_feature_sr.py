"""GaussianFeatureSR (feature splatting + per-pixel MLP decoder): encode once / render any size,
windows, training, triton == torch, checkpoints, CLIs, configuration errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d import Gaussians2D
from gsplat2d.sr.feature import FeatureSRConfig, GaussianFeatureSR
from gsplat2d.sr.model import build_model, load_checkpoint, load_model, preset_config, save_checkpoint
from gsplat2d.sr.render import main as render_main
from gsplat2d.sr.rendering import render_to_array

TINY = dict(n_feats=8, n_blocks=1, feature_dim=8, bank_size=4, decoder_hidden=16)


def _lr(b=1, h=7, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def _trained_like(cfg: FeatureSRConfig, seed: int = 0) -> GaussianFeatureSR:
    """A model with every weight random (the zero-initialised decoder output layer included), so
    each part of the pipeline changes the output."""
    torch.manual_seed(seed)
    m = GaussianFeatureSR(cfg)
    with torch.no_grad():
        m.head.weight.normal_(0, 0.05)
        m.decoder[-1].weight.normal_(0, 0.2)
        m.decoder[-1].bias.normal_(0, 0.05)
    return m.eval()


@pytest.mark.parametrize("shape", ["bank", "direct"])
def test_encode_once_render_many_sizes(shape):
    """One encode, renders at x2, x3.7 and a non-uniform size, each equal to a fresh forward."""
    m = _trained_like(FeatureSRConfig(**TINY, shape=shape))
    lr = _lr(2, 6, 8)
    with torch.no_grad():
        field = m.encode(lr)
        assert isinstance(field, Gaussians2D) and field.mode == m.config.mode == "sum_taper" and field.source_size == (8, 6)
        assert field.channels == 3 + 8 + 1 == m.field_channels
        assert torch.equal(field.colors[..., -1], torch.ones_like(field.colors[..., -1]))
        for size in [(16, 12), (30, 22), (21, 9)]:  # x2, x3.7 (rounded like the CLI), 2.6 x 1.5
            a = m.render(field, *size, backend="torch")
            assert a.shape == (2, 3, size[1], size[0]) and torch.isfinite(a).all()
            assert torch.equal(a, m(lr, size, backend="torch"))


def test_windowed_render_equals_a_whole_render():
    """The decoder runs per window with the whole image's cell size; a mutant passing the window's
    own size as the cell would differ (the cell input is live: see the last assertion)."""
    m = _trained_like(FeatureSRConfig(**TINY))
    with torch.no_grad():
        field = m.encode(_lr(1, 7, 9))
        unb = field._like(field.means[0], field.covariances[0], field.colors[0], field.opacities[0])
        whole = m.render(field, 33, 26, backend="torch")[0].permute(1, 2, 0).numpy()
        win = render_to_array(unb, 33, 26, window=10, backend="torch", as_uint8=False,
                              decode=m.pixel_decoder(unb, 33, 26))
        np.testing.assert_allclose(win, whole, rtol=0, atol=2e-6)  # worst observed 4.8e-7
        wrong_cell = render_to_array(unb, 33, 26, window=10, backend="torch", as_uint8=False,
                                     decode=m.pixel_decoder(unb, 10, 10))
        assert np.abs(wrong_cell - whole).max() > 1e-3


def _layout(splat: torch.Tensor, layout: str) -> torch.Tensor:
    """The splat as stored by the torch backend (channels-last, contiguous) or by the numba
    backend (channel-major: a permuted ``[B, C, H, W]``); ``decode`` takes each in place."""
    if layout == "channel-major":
        out = splat.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        assert not out.is_contiguous()
        return out
    return splat.contiguous()


LAYOUTS = ["channels-last", "channel-major"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoding_in_row_blocks_equals_one_pass(monkeypatch, layout):
    """Outside autograd the decoder runs on row blocks (bounded memory): the same pixels."""
    import gsplat2d.sr.feature as feature

    m = _trained_like(FeatureSRConfig(**TINY))
    with torch.no_grad():
        splat, _ = m.encode(_lr(2, 7, 9)).render(31, 23, backend="torch")
        splat = _layout(splat, layout)
        whole = m.decode(splat, (0.3, 0.3))
        monkeypatch.setattr(feature, "DECODE_PIXELS", 70)  # 2 rows of 31 per block, a ragged last block
        blocks = m.decode(splat, (0.3, 0.3))
    torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-6)  # worst observed 0 (bit-identical)


def _decode_by_convolutions(m: GaussianFeatureSR, splat: torch.Tensor, cell) -> torch.Tensor:
    """The decoder as the model defines it: ``[feature / W, rgb / W, cell]`` as an NCHW image
    through its 1x1 convolutions, plus ``rgb / W`` (the independent form of ``decode``)."""
    x = splat.permute(0, 3, 1, 2)
    w = x[:, -1:].clamp(min=1e-4)
    mean = x[:, :-1] / w
    b, _, h, wd = x.shape
    cells = torch.tensor(cell, dtype=x.dtype).view(1, 2, 1, 1).expand(b, 2, h, wd)
    inp = torch.cat([mean[:, 3:], mean[:, :3], cells], 1)
    return (mean[:, :3] + m.decoder(inp)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_decode_equals_the_convolutions(monkeypatch, layout):
    """decode (one addmm per layer on the splat's own storage, channels-last or channel-major,
    cell folded into the first bias, pixel blocks outside autograd) equals the decoder's
    convolutions on the concatenated input, with and without autograd; a mutant that keeps the
    decoder's [feature, rgb] column order is far off. Gradients to the splat and the decoder
    weights agree too."""
    import gsplat2d.sr.feature as feature

    m = _trained_like(FeatureSRConfig(**TINY))
    with torch.no_grad():
        for lyr in m.decoder:
            if isinstance(lyr, torch.nn.Conv2d):
                lyr.weight.normal_(0, 0.3)
        splat, _ = m.encode(_lr(2, 7, 9)).render(31, 23, backend="torch")
        splat = _layout(splat, layout)
        ref = _decode_by_convolutions(m, splat, (0.3, 0.25))
        monkeypatch.setattr(feature, "DECODE_PIXELS", 100)  # blocks, a ragged last one
        got = m.decode(splat, (0.3, 0.25))
    assert got.shape == ref.shape
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)  # worst observed 1.2e-7
    leaf = splat.clone().requires_grad_(True)
    g = torch.rand(ref.shape, generator=torch.Generator().manual_seed(3))
    (m.decode(leaf, (0.3, 0.25)) * g).sum().backward()
    got_grads = [leaf.grad] + [p.grad.clone() for p in m.decoder.parameters()]
    leaf.grad = None
    m.zero_grad()
    (_decode_by_convolutions(m, leaf, (0.3, 0.25)) * g).sum().backward()
    ref_grads = [leaf.grad] + [p.grad for p in m.decoder.parameters()]
    for a, b in zip(got_grads, ref_grads):
        # float32 sums in another order: worst observed 3.4e-7 of the largest entry
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6 * float(b.abs().max()))
    # mutant: the decoder's own column order applied to the splat's channels
    w0 = m.decoder[0].weight
    monkeypatch.setattr(m, "_decoder_matrices", lambda cell, dt, dev: [
        (w0.reshape(w0.shape[0], -1)[:, : m.field_channels - 1], m.decoder[0].bias)]
        + GaussianFeatureSR._decoder_matrices(m, cell, dt, dev)[1:])
    with torch.no_grad():
        assert (m.decode(splat, (0.3, 0.25)) - ref).abs().max() > 0.05


def test_flat_image_renders_flat_to_the_corners():
    """Normalising by the splatted weight (and the border ring) keeps a flat image flat at any
    scale, a 1x1 image included (untrained model: decoder output 0)."""
    m = GaussianFeatureSR(FeatureSRConfig(**TINY)).eval()
    torch.nn.init.zeros_(m.head.weight)
    for h, w, size in [(1, 1, (2, 2)), (1, 1, (37, 53)), (5, 7, (14, 10)), (5, 7, (26, 19))]:
        lr = torch.tensor([200.0, 30.0, 40.0]).div(255).view(1, 3, 1, 1).expand(1, 3, h, w)
        with torch.no_grad():
            out = m(lr, size, backend="torch")
        err = (out - lr[..., :1, :1]).abs().max() * 255
        assert err < 0.01, (h, w, size, float(err))  # worst observed 8e-5 levels: a weighted mean of one colour


def test_weight_normalisation_is_live():
    """A mutant without the division by the splatted weight renders a flat 1x1 image dark."""
    m = GaussianFeatureSR(FeatureSRConfig(**TINY)).eval()
    torch.nn.init.zeros_(m.head.weight)
    lr = torch.full((1, 3, 1, 1), 0.6)
    with torch.no_grad():
        field = m.encode(lr)
        splat, _ = field.render(6, 6, backend="torch")
    weight = splat[..., -1]
    assert float((weight - 1).abs().max()) > 0.05  # the weight is far from 1: normalisation matters
    assert torch.allclose(m.decode(splat, (1 / 6, 1 / 6)), torch.full((1, 6, 6, 3), 0.6), atol=1e-5)


def test_hard_selection_at_inference_only():
    cfg = FeatureSRConfig(**TINY, select="hard")
    m = _trained_like(cfg)
    lr = _lr(1, 5, 6)
    with torch.no_grad():
        hard = m.encode(lr).covariances
        m.train()
        soft = m.encode(lr).covariances
    assert not torch.allclose(hard, soft)
    bank = m.bank.detach()
    from gsplat2d.conics import covariances_from_scale_rotation

    kernels = covariances_from_scale_rotation(torch.exp(bank[:, :2]), bank[:, 2])
    # Hard selection: every covariance is one bank kernel times a positive scalar (parallel
    # vectors); soft selection mixes kernels, so most of its covariances are parallel to none.
    def parallel_to_a_kernel(cov: torch.Tensor) -> torch.Tensor:
        cov_lr = cov[0] * torch.tensor([36.0, 30.0, 25.0])  # back to LR px^2 (w = 6, h = 5)
        cos = torch.nn.functional.cosine_similarity(cov_lr[:, None, :], kernels[None], dim=-1)  # [N, M]
        return cos.max(-1).values > 1 - 1e-6

    assert parallel_to_a_kernel(hard).all()
    assert parallel_to_a_kernel(soft).float().mean() < 0.5


@pytest.mark.parametrize("shape", ["bank", "direct"])
def test_gradients_reach_every_parameter(shape):
    m = _trained_like(FeatureSRConfig(**TINY, shape=shape)).train()
    out = m(_lr(2, 6, 5), (13, 15), backend="torch")
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = GaussianFeatureSR(FeatureSRConfig(**TINY)).train()
    hr = torch.nn.functional.interpolate(_lr(2, 8, 8, seed=3), size=(24, 24), mode="bicubic", align_corners=False)
    hr = hr + 0.1 * torch.sin(torch.arange(24.0) * 1.3).view(1, 1, 1, 24)
    lr = torch.nn.functional.interpolate(hr, size=(8, 8), mode="area")
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = (m(lr, (24, 24), backend="torch") - hr).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("backend", ["numba", "triton"])
def test_backend_matches_torch_per_step(tmp_path, backend):
    """The training loop on a tiny feature model, C = 8 features + 3 colours + 1 weight = 12
    channels through the many-channel numba / Triton kernels (Triton: interpreter): the same
    per-step losses as the torch backend (one step per epoch here)."""
    pytest.importorskip(backend)  # both are optional; torch alone runs the rest
    from gsplat2d.train.loop import TrainConfig, train

    assert os.environ.get("TRITON_INTERPRET") == "1"
    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(4):
        Image.fromarray((_lr(1, 21, 23, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(hr / f"{i}.png")
    losses = {}
    for be in ("torch", backend):
        cfg = TrainConfig(dataset_path=str(hr), save_path=str(tmp_path / be / "m.pth"),
                          samples_dir="", epochs=3, batch_size=4, lr=2e-3, patch_size=6, scale_min=2.0,
                          scale_max=2.0, preset="feature", model=TINY, backend=be, lpips=False,
                          progress=False, device="cpu")
        losses[be] = [r["train_loss"] for r in train(cfg)["history"]]
    assert len(losses["torch"]) == 3
    np.testing.assert_allclose(losses[backend], losses["torch"], rtol=1e-5)  # worst 1.6e-7 triton, 7.8e-8 numba


def test_checkpoint_round_trip(tmp_path):
    m = _trained_like(FeatureSRConfig(**TINY, shape="direct", cell=False))
    p = tmp_path / "f.pth"
    save_checkpoint(p, m)
    assert load_checkpoint(p)["arch"] == "feature"
    m2 = load_model(p)
    assert isinstance(m2, GaussianFeatureSR) and m2.config == m.config
    lr = _lr(1, 5, 6)
    with torch.no_grad():
        assert torch.equal(m(lr, (11, 13), backend="torch"), m2(lr, (11, 13), backend="torch"))
    assert m2.decoder_sha256() == m.decoder_sha256()


@pytest.fixture
def feature_model(tmp_path) -> Path:
    p = tmp_path / "feature.pth"
    save_checkpoint(p, _trained_like(FeatureSRConfig(**TINY)))
    return p


@pytest.fixture
def lr_png(tmp_path) -> Path:
    p = tmp_path / "lr.png"
    Image.fromarray((_lr(1, 11, 13)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(p)
    return p


def test_render_cli_saves_and_rerenders_a_feature_field(tmp_path, feature_model, lr_png, capsys):
    direct, field, again = tmp_path / "direct.png", tmp_path / "f.g2d", tmp_path / "again.png"
    common = ["--device", "cpu", "--backend", "torch", "--quiet"]
    assert render_main(["--model_path", str(feature_model), "--input_path", str(lr_png), "--output_path", str(direct),
                        "--scale", "2.5", "--save_gaussians", str(field), "--window", "7", *common]) == 0
    _, meta = Gaussians2D.load_with_meta(field)
    assert meta["decoder"] == "gsplat2d.GaussianFeatureSR" and len(meta["decoder_sha256"]) == 64
    # Without the decoder: a clear one-line error, nothing written.
    capsys.readouterr()
    assert render_main(["--gaussians", str(field), "--scale", "2.5", "--output_path", str(again), *common]) == 2
    err = capsys.readouterr().err
    assert "feature field" in err and "--model_path" in err and len(err.strip().splitlines()) == 1
    assert not again.exists()
    # Another feature model (different decoder): refused.
    other = tmp_path / "other.pth"
    save_checkpoint(other, _trained_like(FeatureSRConfig(**TINY), seed=1))
    assert render_main(["--gaussians", str(field), "--model_path", str(other), "--scale", "2.5",
                        "--output_path", str(again), *common]) == 2
    assert "not the model that encoded" in capsys.readouterr().err and not again.exists()
    # The right one: the same pixels as the direct render.
    assert render_main(["--gaussians", str(field), "--model_path", str(feature_model), "--scale", "2.5",
                        "--output_path", str(again), *common]) == 0
    a, b = np.asarray(Image.open(direct)), np.asarray(Image.open(again))
    assert a.shape == (28, 32, 3) and np.array_equal(a, b)
    # --mode alpha does not apply to a feature model.
    assert render_main(["--model_path", str(feature_model), "--input_path", str(lr_png), "--output_path",
                        str(tmp_path / "x.png"), "--scale", "2", "--mode", "alpha", *common]) == 2
    assert "sum mode only" in capsys.readouterr().err


def test_a_field_of_the_shipped_model_rerenders_without_model_path(tmp_path, lr_png, capsys):
    """The default (shipped feature) model's fields find their decoder by its hash."""
    direct, field, again = tmp_path / "direct.png", tmp_path / "f.g2d", tmp_path / "again.png"
    common = ["--device", "cpu", "--backend", "torch", "--quiet"]
    assert render_main(["--input_path", str(lr_png), "--output_path", str(direct), "--scale", "3",
                        "--save_gaussians", str(field), *common]) == 0
    assert render_main(["--gaussians", str(field), "--scale", "3", "--output_path", str(again), *common]) == 0
    assert np.array_equal(np.asarray(Image.open(direct)), np.asarray(Image.open(again)))


def test_test_cli_accepts_a_feature_checkpoint(tmp_path, feature_model, capsys):
    from gsplat2d.eval.cli import main as test_main

    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        Image.fromarray((_lr(1, 24, 28, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(hr / f"{i}.png")
    rc = test_main(["--model_path", str(feature_model), "--data_path", str(hr), "--batch_size", "1", "--crop", "24",
                    "--output_dir", str(tmp_path / "cmp"), "--gt_dir", str(tmp_path / "gt"),
                    "--ren_dir", str(tmp_path / "ren")])
    out = capsys.readouterr().out
    assert rc == 0 and "--- Validation Complete ---" in out and "Average PSNR" in out
    assert len(list((tmp_path / "ren").iterdir())) == 2


def test_train_cli_trains_the_feature_preset(tmp_path):
    from gsplat2d.train.cli import main as train_main

    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(4):
        Image.fromarray((_lr(1, 30, 34, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(hr / f"{i}.png")
    save = tmp_path / "m" / "f.pth"
    rc = train_main(["--dataset_path", str(hr), "--preset", "feature", "--model",
                     '{"n_feats": 8, "n_blocks": 1, "feature_dim": 8, "decoder_hidden": 8}', "--epochs", "1",
                     "--batch_size", "2", "--patch_size", "8", "--save_path", str(save), "--backend", "torch",
                     "--device", "cpu", "--no_lpips", "--quiet", "--samples_dir", str(tmp_path / "s")])
    assert rc == 0
    ck = load_checkpoint(save)
    assert ck["arch"] == "feature" and ck["config"]["feature_dim"] == 8
    assert isinstance(load_model(save), GaussianFeatureSR)


@pytest.mark.parametrize("bad,field", [({"feature_dim": 0}, "feature_dim"), ({"k": 0}, "k"),
                                        ({"bank_size": 0}, "bank_size"), ({"shape": "free"}, "shape"),
                                        ({"mode": "alpha"}, "mode"), ({"cell": "yes"}, "cell"),
                                        ({"decoder_layers": -1}, "decoder_layers")],
                         ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_bad_configs_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        preset_config("feature", bad)


def test_bad_configs_from_the_train_cli_are_one_line(tmp_path, capsys):
    from gsplat2d.train.cli import main as train_main

    common = ["--dataset_path", str(tmp_path), "--save_path", str(tmp_path / "m.pth")]
    for extra, words in (
        (["--preset", "feature", "--model", '{"feature_dim": 0}'], "feature_dim must be a positive int"),
        (["--preset", "feature", "--model", '{"k": -2}'], "k must be a positive int"),
        (["--preset", "feature", "--model", '{"head": "cholesky"}'], "unknown FeatureSRConfig field(s): head"),
    ):
        assert train_main(common + extra) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert train_main(common + ["--preset", "gaussiansr"]) == 2
    assert "invalid choice: 'gaussiansr'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset 'gaussiansr'"):
        build_model("gaussiansr")
    assert not (tmp_path / "m.pth").exists()


def test_demo_runs_a_feature_model(tmp_path, feature_model, capsys):
    from gsplat2d.eval.demo import main as demo_main

    out = tmp_path / "demo"
    assert demo_main(["--quick", "--model_path", str(feature_model), "--output_dir", str(out)]) == 0
    assert Image.open(out / "sr_x3.5.png").size == (56, 56) and Image.open(out / "sr_2x3_of_x2.png").size == (56, 84)
    assert "bicubic PSNR/SSIM" in capsys.readouterr().out
