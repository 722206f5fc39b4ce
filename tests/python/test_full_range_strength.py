"""The default model on a real slice with bone above its window and out-of-field padding
(pydicom-data's 512x512 head slice 693_UNCI.dcm, a test fixture), through /v1/denoise
and the Open Inference Protocol: no HU outside the window is lost, and the strength
control (0 = the input bit for bit; more strength, less noise)."""

import shutil

import numpy as np
import pydicom
import pytest
import tritonclient.http as triton

from conftest import ROOT, hu_of, real_ct_files
from test_serve_support import Server, npy_bytes, npy_load

STRENGTHS = [0.25, 0.5, 0.75, 1.0]


def head_slice():
    for p in real_ct_files():
        if p.name == "693_UNCI.dcm":
            return p
    pytest.fail("pydicom-data's 693_UNCI.dcm is missing (make setup installs pydicom-data)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models = tmp_path_factory.mktemp("full-range") / "models"
    shutil.copytree(ROOT / "models" / "default", models / "default")
    # No warmup: these tests are about pixels, and 512x512 at batch 1 and 8 through the
    # default U-Net costs half a minute of a 2-core CI machine (test_kserve.py covers it).
    server = Server(models, "--warmup-sizes", "none")
    with server:
        yield server


def post(server, path, body, ctype):
    return server.request("POST", path, body=body, headers={"Content-Type": ctype})


def check_full_range(hu_in, hu_out, noise_in):
    bone = hu_in > 1100
    padding = hu_in < -1500
    assert bone.sum() > 500, "the slice should have bone above 1100 HU"
    assert padding.sum() > 1000, "the slice should have out-of-field padding"
    # Padding comes back exactly; bone at most the input's noise level away (here: not
    # touched at all, since the contract passes pixels above the window unchanged).
    np.testing.assert_array_equal(hu_out[padding], hu_in[padding])
    bone_change = float(np.abs(hu_out[bone] - hu_in[bone]).mean())
    assert bone_change <= noise_in, (bone_change, noise_in)
    # ... and nothing was clipped to the window.
    assert hu_out.max() == hu_in.max() and hu_out.min() == hu_in.min()
    return bone_change


def test_bone_and_padding_survive_v1_denoise(served):
    path = head_slice()
    hu_in = hu_of(path)
    assert hu_in.min() < -3000 and hu_in.max() > 1200
    r = post(served, "/v1/denoise?model=default", path.read_bytes(), "application/dicom")
    assert r.status == 200, r.body[:300]
    noise_in = float(r.header("x-ldct-noise-in-hu"))
    out = pydicom.dcmread(__import__("io").BytesIO(r.body))
    hu_out = out.pixel_array.astype(np.float64) * float(out.RescaleSlope) + float(out.RescaleIntercept)
    change = check_full_range(hu_in, hu_out, noise_in)
    print(f"/v1/denoise: mean |out - in| over bone > 1100 HU = {change:.3f} HU (noise in {noise_in:.2f})")
    # Inside the window the model did change the image.
    tissue = (hu_in > -100) & (hu_in < 100)
    assert np.abs(hu_out[tissue] - hu_in[tissue]).mean() > 0.5


def test_bone_and_padding_survive_oip(served):
    hu_in = hu_of(head_slice()).astype(np.float32)
    client = triton.InferenceServerClient(f"127.0.0.1:{served.port}")
    inp = triton.InferInput("input", [1, 1, *hu_in.shape], "FP32")
    inp.set_data_from_numpy(hu_in[None, None], binary_data=True)
    res = client.infer("default", [inp], parameters={"ldct_units": "hu"})
    hu_out = res.as_numpy("output")[0, 0]
    # The /v1 noise estimate of the same slice (same estimator, same pixels).
    r = post(served, "/v1/denoise?model=default", npy_bytes(hu_in), "application/x-npy")
    noise_in = float(r.header("x-ldct-noise-in-hu"))
    change = check_full_range(hu_in.astype(np.float64), hu_out.astype(np.float64), noise_in)
    print(f"OIP: mean |out - in| over bone > 1100 HU = {change:.3f} HU")
    np.testing.assert_allclose(hu_out, npy_load(r.body), atol=1e-3)
    # Strength 0 over OIP, normalised units too: the input tensor back bit for bit.
    for units, tensor in [("hu", hu_in), ("normalised", np.clip(hu_in / 1000, -1, 1).astype(np.float32))]:
        inp = triton.InferInput("input", [1, 1, *tensor.shape], "FP32")
        inp.set_data_from_numpy(tensor[None, None], binary_data=True)
        res = client.infer("default", [inp], parameters={"ldct_units": units, "strength": 0.0})
        assert res.as_numpy("output")[0, 0].tobytes() == tensor.tobytes(), units


def test_strength_zero_is_the_input_and_noise_falls_with_strength(served):
    path = head_slice()
    src = pydicom.dcmread(path)
    # DICOM: strength 0 gives the source's stored pixel values, bit for bit.
    r = post(served, "/v1/denoise?model=default&strength=0", path.read_bytes(), "application/dicom")
    assert r.status == 200, r.body[:300]
    assert r.header("x-ldct-strength") == "0.00"
    out = pydicom.dcmread(__import__("io").BytesIO(r.body))
    assert np.array_equal(out.pixel_array, src.pixel_array)
    assert out.RescaleSlope == src.RescaleSlope and out.RescaleIntercept == src.RescaleIntercept
    assert "strength 0.00" in out.DerivationDescription
    assert out.SOPInstanceUID != src.SOPInstanceUID
    # npy: float32 HU bit for bit, odd values included.
    rng = np.random.default_rng(5)
    hu = hu_of(path).astype(np.float32)
    noisy = (hu + rng.normal(0, 30, hu.shape)).astype(np.float32)
    noisy[0, :3] = [np.float32(1e-7), np.float32(-0.0), np.float32(1234.5678)]
    r = post(served, "/v1/denoise?model=default&strength=0", npy_bytes(noisy), "application/x-npy")
    assert npy_load(r.body).tobytes() == noisy.tobytes()
    # Noise estimate out falls as strength rises.
    noise = []
    for s in STRENGTHS:
        r = post(served, f"/v1/denoise?model=default&strength={s}", npy_bytes(noisy), "application/x-npy")
        assert r.status == 200, r.body[:300]
        noise.append(float(r.header("x-ldct-noise-out-hu")))
    noise_in = float(r.header("x-ldct-noise-in-hu"))
    print(f"noise in {noise_in:.2f} HU; out at strengths {STRENGTHS}: {[round(n, 2) for n in noise]}")
    assert all(a > b for a, b in zip([noise_in] + noise, noise)), (noise_in, noise)
    # A derived instance per strength, each recording it; a retry gives the same UIDs.
    uids = set()
    for s in (0.5, 0.5, 1.0):
        r = post(served, f"/v1/denoise?model=default&strength={s}", path.read_bytes(), "application/dicom")
        d = pydicom.dcmread(__import__("io").BytesIO(r.body))
        assert f"strength {s:.2f}" in d.DerivationDescription
        uids.add(d.SOPInstanceUID)
    assert len(uids) == 2
    for bad in ("1.5", "-0.1", "nan", "x"):
        r = post(served, f"/v1/denoise?model=default&strength={bad}", path.read_bytes(), "application/dicom")
        assert r.status == 400, (bad, r.status)
