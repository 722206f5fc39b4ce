"""`ldct-train metrics` against scikit-image's PSNR and SSIM.

On real CT slices (pydicom / pydicom-data) with Gaussian noise added, in the two
report windows: images clipped to the window, data range = window width, SSIM
with a Gaussian 11x11 window (sigma 1.5), K1 0.01, K2 0.03, population
covariance. The reference values are computed here, at test time.
"""

import json

import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from conftest import hu_of, real_ct_files, run_bin

WINDOWS = [(-1000.0, 1000.0), (-160.0, 240.0)]


def skimage_reference(ref, test, lo, hi):
    r = np.clip(ref.astype(np.float64), lo, hi)
    t = np.clip(test.astype(np.float64), lo, hi)
    rng = hi - lo
    psnr = peak_signal_noise_ratio(r, t, data_range=rng)
    ssim = structural_similarity(
        r, t, data_range=rng, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        K1=0.01, K2=0.03,
    )
    rmse = float(np.sqrt(mean_squared_error(r, t)))
    return psnr, ssim, rmse


@pytest.mark.parametrize("path", real_ct_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("sigma", [10.0, 40.0])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]:g}_{w[1]:g}")
def test_psnr_ssim_rmse_match_skimage(path, sigma, window, tmp_path):
    ref = hu_of(path).astype(np.float32)
    rng = np.random.default_rng(1234)
    noisy = (ref + rng.normal(0.0, sigma, ref.shape)).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "test.npy", noisy)
    lo, hi = window
    out = run_bin(
        "ldct-train", "metrics", "--reference", tmp_path / "ref.npy", "--test",
        tmp_path / "test.npy", f"--window={lo:g},{hi:g}",
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    psnr, ssim, rmse = skimage_reference(ref, noisy, lo, hi)
    assert got["window"] == [lo, hi]
    assert abs(got["psnr"] - psnr) < 1e-3, (got, psnr)
    assert abs(got["ssim"] - ssim) < 1e-4, (got, ssim)
    assert abs(got["rmse_hu"] - rmse) < 1e-3 * max(1.0, rmse), (got, rmse)


def test_dicom_inputs_are_read_as_hu(tmp_path):
    """A .dcm reference and a .npy test: the DICOM side is converted to HU."""
    path = real_ct_files()[0]
    ref = hu_of(path).astype(np.float32)
    noisy = (ref + np.random.default_rng(7).normal(0, 20, ref.shape)).astype(np.float32)
    np.save(tmp_path / "test.npy", noisy)
    got = json.loads(
        run_bin("ldct-train", "metrics", "--reference", path, "--test", tmp_path / "test.npy")
        .stdout.strip()
    )
    psnr, ssim, _ = skimage_reference(ref, noisy, -1000.0, 1000.0)
    assert got["window"] == [-1000.0, 1000.0]
    assert abs(got["psnr"] - psnr) < 1e-3
    assert abs(got["ssim"] - ssim) < 1e-4


def test_bad_inputs_fail_cleanly(tmp_path):
    a = np.zeros((32, 32), np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.zeros((32, 33), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    cases = [
        (["--reference", tmp_path / "a.npy", "--test", tmp_path / "b.npy"], "differ in size"),
        (["--reference", tmp_path / "a.npy", "--test", tmp_path / "junk.npy"], "npy"),
        (["--reference", tmp_path / "a.npy", "--test", tmp_path / "missing.npy"], "missing.npy"),
        (["--reference", tmp_path / "a.npy", "--test", tmp_path / "a.npy", "--window=5,1"], "window"),
    ]
    for args, needle in cases:
        proc = run_bin("ldct-train", "metrics", *args, check=False)
        assert proc.returncode != 0
        assert "panicked" not in proc.stderr
        assert needle in proc.stderr, proc.stderr
