"""The image-texture and physics figures of scripts/quality_multi.py on synthetic images
with known answers: the noise power spectrum of white noise (its level and mean
frequency for the sampling), the 10-90% width of a Gaussian-blurred straight edge
(2.563 sigma), the bias and noise of a constant offset plus noise, and the flat-region
mask of a phantom. No data set or binary is needed."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.special import ndtr

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import quality_multi as qm  # noqa: E402

# 10-90% rise of a Gaussian-blurred step: 2 * Phi^-1(0.9) sigma
K_10_90 = 2.0 * 1.2815515655446004


def test_k_10_90_is_the_gaussian_quantile():
    assert ndtr(K_10_90 / 2) == pytest.approx(0.9, abs=1e-12)
    assert K_10_90 == pytest.approx(2.563, abs=1e-3)


# ------------------------------------------------------------------ NPS


@pytest.mark.parametrize("n,dx", [(32, 0.7), (64, 0.5)])
def test_white_noise_nps_level_and_mean_frequency(n, dx):
    rng = np.random.default_rng(7)
    sigma = 25.0
    noise = rng.normal(0.0, sigma, (512, 512))
    rois = [(y, x) for y in range(0, 512 - n + 1, n) for x in range(0, 512 - n + 1, n)]
    nps = qm.nps_2d(noise, rois, n, dx)
    # White noise: NPS = sigma^2 dx dy at every frequency but DC (mean removed).
    c = n // 2
    assert nps[c, c] == pytest.approx(0.0, abs=1e-9)
    off_dc = np.delete(nps.ravel(), c * n + c)
    assert off_dc.mean() == pytest.approx(sigma**2 * dx * dx, rel=0.02)
    # Its integral over the frequency plane is the variance (less the DC share 1/N^2).
    df = 1.0 / (n * dx)
    assert nps.sum() * df * df == pytest.approx(sigma**2 * (1 - 1 / n**2), rel=0.02)
    f, radial = qm.radial_nps(nps, dx)
    nyquist = 1.0 / (2 * dx)
    assert f[-1] == pytest.approx(nyquist)
    assert f[1] - f[0] == pytest.approx(df)
    # Flat radial NPS over bins k = 1..N/2 (DC empty): f_av = (N/2 + 1)/2 df exactly,
    # half the Nyquist frequency plus half a bin.
    expected = (n / 2 + 1) / 2 * df
    assert expected == pytest.approx(nyquist / 2 + df / 2)
    got = qm.nps_mean_frequency(f, radial)
    assert got == pytest.approx(expected, rel=0.02)


def test_nps_mean_frequency_falls_for_low_pass_noise_and_uses_the_spacing():
    rng = np.random.default_rng(3)
    white = rng.normal(0.0, 30.0, (512, 512))
    smooth = ndi.gaussian_filter(white, 1.5)
    rois = [(y, x) for y in range(0, 480, 32) for x in range(0, 480, 32)]
    fw = qm.slice_nps(white, rois, 0.5)["f_av"]
    fs = qm.slice_nps(smooth, rois, 0.5)["f_av"]
    assert fs < 0.6 * fw
    # The same pixels at twice the spacing: every frequency halves.
    assert qm.slice_nps(white, rois, 1.0)["f_av"] == pytest.approx(fw / 2, rel=1e-9)


# ------------------------------------------------------------------ edges


def blurred_edge_image(sigma_px, angle_deg, size=256, lo=-1000.0, hi=40.0, offset=0.3):
    """A straight air/tissue edge through the image at an angle, blurred by a Gaussian of
    sigma_px: exact samples lo + (hi - lo) Phi(d / sigma) of the signed distance d."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.deg2rad(angle_deg)
    d = (x - size / 2 - offset) * np.cos(a) + (y - size / 2) * np.sin(a)
    return (lo + (hi - lo) * ndtr(d / sigma_px)).astype(np.float32)


@pytest.mark.parametrize("sigma_px", [0.8, 1.2, 2.0])
@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0])
def test_blurred_step_has_10_90_width_2_563_sigma(sigma_px, angle):
    spacing = 0.7
    img = blurred_edge_image(sigma_px, angle)
    segs = qm.edge_segments(img)
    assert len(segs) >= 5
    widths = qm.edge_widths(img, segs, spacing)
    assert np.isfinite(widths).all()
    assert np.median(widths) == pytest.approx(K_10_90 * sigma_px * spacing, rel=0.04)
    # the stored full-dose width is the same measurement
    assert np.median([s["width_fd_px"] for s in segs]) * spacing == pytest.approx(
        np.median(widths), rel=1e-9)


def test_more_blur_widens_the_edge_as_gaussians_add():
    s0, s1 = 1.0, 1.5
    fd = blurred_edge_image(s0, 10.0)
    out = blurred_edge_image(np.hypot(s0, s1), 10.0)
    segs = qm.edge_segments(fd)
    w_fd = np.median(qm.edge_widths(fd, segs, 1.0))
    w_out = np.median(qm.edge_widths(out, segs, 1.0))
    assert w_out / w_fd == pytest.approx(np.hypot(s0, s1) / s0, rel=0.04)


def test_edge_width_is_robust_to_noise_and_ignores_weak_edges():
    rng = np.random.default_rng(11)
    img = blurred_edge_image(1.2, 30.0) + rng.normal(0, 20, (256, 256)).astype(np.float32)
    segs = qm.edge_segments(img)
    assert len(segs) >= 5
    w = np.median(qm.edge_widths(img, segs, 1.0))
    assert w == pytest.approx(K_10_90 * 1.2, rel=0.1)
    # a 300 HU step (not air/tissue) is no segment
    weak = blurred_edge_image(1.2, 30.0, lo=-300.0, hi=0.0) - 700.0
    assert qm.edge_segments(weak) == []


def test_esf_width_direct():
    t = np.arange(-8, 8.0001, 0.1)
    assert qm.esf_width_10_90(ndtr(t / 1.5), t) == pytest.approx(K_10_90 * 1.5, rel=0.01)
    # a hard step: 10% and 90% fall in one sample interval
    assert qm.esf_width_10_90((t > 0).astype(float), t) <= 0.1 + 1e-9
    assert np.isnan(qm.esf_width_10_90(np.zeros_like(t), t))


# ------------------------------------------------------------------ bias, noise


def test_bias_and_noise_of_a_constant_offset_plus_noise():
    rng = np.random.default_rng(5)
    fd = np.zeros((128, 128))
    mask = np.zeros_like(fd, bool)
    mask[20:100, 30:110] = True
    out = fd + 7.0 + rng.normal(0, 4.0, fd.shape)
    out[~mask] += 500.0  # outside the mask: ignored
    std, mean = qm.noise_and_bias(out - fd, mask)
    assert mean == pytest.approx(7.0, abs=0.1)
    assert std == pytest.approx(4.0, rel=0.03)


# ------------------------------------------------------------------ flat regions


def phantom(size=256, noise=0.0, seed=0):
    """Water disk (0 HU, radius 100) in air, with a bone disk (1000 HU), a lung-like
    disk (-800 HU) and a 60 HU lesion inside."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2
    img = np.full((size, size), -1000.0)
    img[np.hypot(y - c, x - c) < 100] = 0.0
    img[np.hypot(y - c + 40, x - c) < 20] = 1000.0
    img[np.hypot(y - c - 40, x - c - 30) < 18] = -800.0
    img[np.hypot(y - c - 30, x - c + 50) < 12] = 60.0
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return img.astype(np.float32)


@pytest.mark.parametrize("noise", [0.0, 5.0])
def test_flat_mask_on_a_phantom(noise):
    img = phantom(noise=noise)
    clean = phantom()
    mask = qm.flat_mask(img)
    # the strong boundaries (water/air, bone, lung: steps of 800 HU and more)
    strong = np.hypot(ndi.sobel(clean, 0), ndi.sobel(clean, 1)) > 8 * 300.0
    dist = ndi.distance_transform_edt(~strong)
    soft = (clean == 0.0) | (clean == 60.0)  # water and the lesion: soft-tissue HU
    # inside: soft tissue only (never bone, lung or air), at least 4 px from a strong
    # edge (a 9x9 window over a step of more than ~90 HU has a std above 20 HU)
    assert mask.any()
    assert soft[mask].all()
    assert dist[mask].min() >= 4.0
    # the 60 HU lesion's rim is not flat (std 20 HU within ~1 px of its edge)
    lesion_edge = (np.hypot(ndi.sobel(clean, 0), ndi.sobel(clean, 1)) > 0) & ~strong
    lesion_edge &= np.abs(clean - 30.0) <= 30.0
    assert not (mask & lesion_edge).any()
    # it covers the water away from edges and away from the skin (body eroded 5 px)
    body = np.hypot(*(np.mgrid[0:256, 0:256] - 128.0)) < 100
    interior = (clean == 0.0) & (dist >= 7) & ndi.binary_erosion(body, iterations=7)
    assert mask[interior].mean() > 0.98
    # nothing within 5 px of the skin
    assert not (mask & ~ndi.binary_erosion(body, iterations=5)).any()


def test_flat_mask_rejects_noisy_full_dose_and_nps_rois_stay_inside():
    mask = qm.flat_mask(phantom(noise=30.0))  # local std ~ 30 HU > 20 HU: nothing is flat
    assert mask.mean() < 0.01
    clean_mask = qm.flat_mask(phantom())
    rois = qm.nps_rois(clean_mask, size=32, min_fraction=0.9, stride=16)
    assert rois
    for y, x in rois:
        assert clean_mask[y:y + 32, x:x + 32].mean() >= 0.9


def test_body_mask_keeps_the_largest_component_and_fills_holes():
    img = phantom()
    img[5:15, 5:15] = 0.0  # a small object outside the body (a table piece)
    b = qm.body_mask(img)
    assert not b[10, 10]
    assert b[128, 128] and b[128 + 40, 128 + 30]  # the lung disk (-800 HU) is a hole: filled


# ------------------------------------------------------------------ never worse


class _FakeData:
    test_names = ["a_0001", "a_0002", "b_0001"]
    sources = {"a": {}, "b": {}}
    source_of = staticmethod(lambda n: n.rsplit("_", 1)[0])


def _per(values):
    """values: {name: (psnr wide, ssim wide, psnr soft, ssim soft)}"""
    (w, s) = [f"{lo:g},{hi:g}" for lo, hi in qm.WINDOWS]
    return {n: {"metrics": {w: {"psnr": v[0], "ssim": v[1], "rmse_hu": 1.0},
                            s: {"psnr": v[2], "ssim": v[3], "rmse_hu": 1.0}},
                "physics": {"nps_rois": 0}}
            for n, v in values.items()}


def test_never_worse_lists_every_slice_below_the_input_in_any_metric_or_window():
    base = _per({"a_0001": (40, 0.9, 30, 0.8), "a_0002": (40, 0.9, 30, 0.8),
                 "b_0001": (40, 0.9, 30, 0.8)})
    out = _per({"a_0001": (45, 0.95, 35, 0.9),    # better everywhere
                "a_0002": (45, 0.95, 35, 0.79),   # SSIM in the soft-tissue window worse
                "b_0001": (39.9, 0.95, 35, 0.9)})  # PSNR in the wide window worse
    agg = qm.aggregate(_FakeData(), out, base)
    nw = agg["never_worse"]
    assert nw["slices_below_input"] == 2 and nw["of"] == 3
    assert [w["slice"] for w in nw["list"]] == ["a_0002", "b_0001"]
    assert nw["list"][0]["below_input"] == [
        {"metric": "ssim", "window": "-160,240", "output": 0.79, "input": 0.8}]
    gain = agg["windows"]["-1000,1000"]["gain"]["psnr"]["mean"]
    assert gain == pytest.approx((5 + 5 - 0.1) / 3)
    assert agg["per_source"]["a"]["psnr_gain@-1000,1000"] == pytest.approx(5.0)
    assert agg["per_source"]["b"]["psnr_gain@-1000,1000"] == pytest.approx(-0.1)
