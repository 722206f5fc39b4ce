"""ldct-serve end to end: the real binary on 127.0.0.1 with a tiny real model, checked
against pydicom and Python onnxruntime (independent of our Rust code)."""

import http.client
import io
import json
import ssl
import subprocess
import time
import uuid

import numpy as np
import pydicom
import pytest

from conftest import ROOT, hu_of, ldct_bin, real_ct_files
from test_serve_support import (
    Server,
    free_port,
    npy_bytes,
    npy_load,
    reference_hu,
    self_signed_cert,
    session,
    write_tiny_model,
)

TOKEN = "t0ken-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-api")
    models = root / "models"
    onnx_path = write_tiny_model(models / "tiny")
    server = Server(models, "--api-token", TOKEN, "--max-body-bytes", LIMIT, "--max-batch", 4)
    with server:
        yield server, session(onnx_path)
    assert server.proc.returncode == 0, server.text_log()
    assert "shutdown complete" in server.text_log()


def post(server, path, body, ctype, headers=AUTH):
    return server.request("POST", path, body=body, headers={"Content-Type": ctype, **headers})


@pytest.mark.parametrize("path", real_ct_files(), ids=lambda p: p.name)
def test_dicom_in_derived_dicom_out(served, path):
    server, sess = served
    src = pydicom.dcmread(path)
    r = post(server, "/v1/denoise?model=tiny", path.read_bytes(), "application/dicom")
    assert r.status == 200, r.body[:500]
    assert r.header("content-type") == "application/dicom"
    assert r.header("x-ldct-model") == "tiny"
    assert r.header("x-ldct-model-version") == "0.1.0"
    # The no-reference noise estimate needs enough flat soft tissue: "unknown" otherwise
    # (the small 128x128 slice), a number in HU for the 512x512 ones.
    noise = [r.header("x-ldct-noise-in-hu"), r.header("x-ldct-noise-out-hu")]
    if src.Rows >= 512:
        noise_in, noise_out = map(float, noise)
        # (693_UNCI is noise-free: piecewise constant, an estimate of 0 HU.)
        assert 0 <= noise_out <= noise_in + 1e-3, (noise_in, noise_out)
    else:
        assert all(v == "unknown" or float(v) >= 0 for v in noise), noise

    out = pydicom.dcmread(io.BytesIO(r.body))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert out.SOPInstanceUID != src.SOPInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    for uid in (out.SOPInstanceUID, out.SeriesInstanceUID):
        assert uid.is_valid and len(uid) <= 64 and uid.startswith("2.25.")
    assert out.StudyInstanceUID == src.StudyInstanceUID
    assert out.SOPClassUID == src.SOPClassUID
    for kw in ("PatientID", "PatientName", "FrameOfReferenceUID", "PixelSpacing",
               "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept",
               "Rows", "Columns", "PixelRepresentation"):
        if kw in src:
            assert out.get(kw) == src.get(kw), kw
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "tiny" in out.DerivationDescription and "0.1.0" in out.DerivationDescription
    ref = out.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    eq = out.ContributingEquipmentSequence[-1]
    assert eq.Manufacturer == "ldct"
    assert eq.ManufacturerModelName == "tiny" and eq.SoftwareVersions == "0.1.0"
    assert "[ldct tiny 0.1.0]" in out.SeriesDescription
    # A Series Number apart from the source's, a disclaimer, the model file's Device UID.
    src_number = int(src.SeriesNumber) if src.get("SeriesNumber") not in (None, "") else 0
    assert int(out.SeriesNumber) == src_number + 1000
    assert out.ImageComments.startswith("Processed by ldct")
    assert "not for primary diagnosis" in out.ImageComments
    assert eq.DeviceUID.startswith("2.25.") and eq.DeviceUID.is_valid
    assert r.header("x-ldct-sop-instance-uid") == out.SOPInstanceUID

    # Pixel data: HU equal to Python onnxruntime's output on the same input within 1 HU.
    got = out.pixel_array.astype(np.float64) * float(out.RescaleSlope) + float(out.RescaleIntercept)
    want = reference_hu(sess, hu_of(path))
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= 1.0, f"max |server - onnxruntime| = {err} HU"

    # Deterministic derived UIDs: a retry gives the same instance.
    again = pydicom.dcmread(io.BytesIO(post(server, "/v1/denoise?model=tiny", path.read_bytes(), "application/dicom").body))
    assert again.SOPInstanceUID == out.SOPInstanceUID
    assert again.SeriesInstanceUID == out.SeriesInstanceUID


def test_npy_round_trip_matches_onnxruntime(served):
    server, sess = served
    rng = np.random.default_rng(7)
    hu = (rng.normal(40, 30, (61, 77))).astype(np.float32)
    hu[:10] = -1000
    r = post(server, "/v1/denoise?model=tiny", npy_bytes(hu), "application/x-npy")
    assert r.status == 200, r.body
    assert r.header("content-type") == "application/x-npy"
    out = npy_load(r.body)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, reference_hu(sess, hu), atol=0.05)
    # int16 HU in, float32 HU out.
    r = post(server, "/v1/denoise", npy_bytes(hu.round().astype(np.int16)), "application/x-npy")
    assert r.status == 200
    np.testing.assert_allclose(npy_load(r.body), reference_hu(sess, hu.round()), atol=0.05)


def test_bad_inputs_get_the_right_4xx_and_the_server_keeps_serving(served):
    server, _ = served
    good = npy_bytes(np.zeros((32, 32), np.float32))
    ct = real_ct_files()[0].read_bytes()
    nan = np.zeros((32, 32), np.float32)
    nan[5, 5] = np.nan
    cases = [
        ("truncated DICOM", "/v1/denoise", ct[: len(ct) // 2], "application/dicom", AUTH, 400, "invalid_dicom"),
        ("wrong-dtype npy", "/v1/denoise", npy_bytes(np.zeros((8, 8), np.int64)), "application/x-npy", AUTH, 422, "unsupported_dtype"),
        ("float64 npy", "/v1/denoise", npy_bytes(np.zeros((8, 8), np.float64)), "application/x-npy", AUTH, 422, "unsupported_dtype"),
        ("3-D array", "/v1/denoise", npy_bytes(np.zeros((2, 8, 8), np.float32)), "application/x-npy", AUTH, 422, "unsupported_shape"),
        ("NaN", "/v1/denoise", npy_bytes(nan), "application/x-npy", AUTH, 422, "non_finite"),
        ("empty body", "/v1/denoise", b"", "application/x-npy", AUTH, 400, "empty_body"),
        ("not npy", "/v1/denoise", b"hello", "application/x-npy", AUTH, 400, "invalid_npy"),
        ("over the limit", "/v1/denoise", b"\0" * (LIMIT + 1), "application/x-npy", AUTH, 413, "payload_too_large"),
        ("unknown model", "/v1/denoise?model=nope", good, "application/x-npy", AUTH, 404, "unknown_model"),
        ("wrong token", "/v1/denoise", good, "application/x-npy", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ("no token", "/v1/denoise", good, "application/x-npy", {}, 401, "unauthorized"),
        ("wrong media type", "/v1/denoise", good, "image/png", AUTH, 415, "unsupported_media_type"),
    ]
    for what, path, body, ctype, headers, status, code in cases:
        r = post(server, path, body, ctype, headers)
        assert r.status == status, (what, r.status, r.body[:300])
        err = r.json()["error"]
        assert err["code"] == code, (what, err)
        assert err["message"], what
        # ... and a good request still works after each bad one.
        ok = post(server, "/v1/denoise", good, "application/x-npy")
        assert ok.status == 200, (what, ok.body[:300])


def test_health_and_metrics_need_no_token_the_rest_does(served):
    server, _ = served
    assert server.request("GET", "/v2/health/live").status == 200
    assert server.request("GET", "/v2/health/ready").status == 200
    assert server.request("GET", "/metrics").status == 200
    for path in ("/v1/models", "/v2", "/v2/models/tiny"):
        assert server.request("GET", path).status == 401, path
        assert server.request("GET", path, headers=AUTH).status == 200, path
    models = server.request("GET", "/v1/models", headers=AUTH).json()["models"]
    assert [(m["name"], m["version"], m["device"]) for m in models] == [("tiny", "0.1.0", "cpu")]


def test_evaluate_reports_psnr_ssim_rmse_against_skimage(served):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    server, sess = served
    path = real_ct_files()[0]
    reference = hu_of(path).astype(np.float32)
    rng = np.random.default_rng(3)
    noisy = (reference + rng.normal(0, 40, reference.shape)).astype(np.float32)
    boundary = "ldct-" + uuid.uuid4().hex
    body = b""
    parts = [("input", "ld.npy", "application/x-npy", npy_bytes(noisy)),
             ("reference", "fd.dcm", "application/dicom", path.read_bytes())]
    for name, fname, ctype, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{fname}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    r = post(server, "/v1/evaluate?model=tiny", body, f"multipart/form-data; boundary={boundary}")
    assert r.status == 200, r.body
    rep = r.json()
    assert rep["model"] == "tiny" and rep["shape"] == list(reference.shape)
    output = reference_hu(sess, noisy)
    for w in rep["windows"]:
        lo, hi = w["window"]
        for key, img in (("input", noisy), ("output", output)):
            a, b = np.clip(reference, lo, hi).astype(np.float64), np.clip(img, lo, hi).astype(np.float64)
            psnr = peak_signal_noise_ratio(a, b, data_range=hi - lo)
            ssim = structural_similarity(a, b, data_range=hi - lo, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
            rmse = float(np.sqrt(np.mean((a - b) ** 2)))
            assert w[key]["psnr"] == pytest.approx(psnr, abs=0.02), (w, key)
            assert w[key]["ssim"] == pytest.approx(ssim, abs=2e-3), (w, key)
            assert w[key]["rmse_hu"] == pytest.approx(rmse, rel=2e-3, abs=0.02), (w, key)


def test_reload_keeps_the_old_model_when_the_new_one_is_broken(tmp_path):
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    with Server(models) as server:
        good = npy_bytes(np.zeros((16, 16), np.float32))
        # A new version whose ONNX is garbage (checksum consistent): rejected, 0.1.0 serves on.
        write_tiny_model(models / "tiny", version="0.2.0", onnx_bytes=b"\x08\x07garbage")
        r = server.request("POST", "/v1/models/reload")
        assert r.status == 200
        rep = r.json()
        assert rep["rejected"] and rep["rejected"][0]["kept"] == {"name": "tiny", "version": "0.1.0"}
        r = post(server, "/v1/denoise", good, "application/x-npy", {})
        assert r.status == 200 and r.header("x-ldct-model-version") == "0.1.0"
        # A good new version is swapped in.
        write_tiny_model(models / "tiny", version="0.2.0")
        rep = server.request("POST", "/v1/models/reload").json()
        assert rep["loaded"] == [{"name": "tiny", "version": "0.2.0"}]
        r = post(server, "/v1/denoise", good, "application/x-npy", {})
        assert r.header("x-ldct-model-version") == "0.2.0"
        meta = server.request("GET", "/metrics").body.decode()
        assert 'ldct_model_info{device="cpu",name="tiny",version="0.2.0"} 1' in meta
        assert 'version="0.1.0"' not in meta.split("ldct_model_info")[-1].split("\n# ")[0]


def test_no_model_the_server_still_starts_and_says_so(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    with Server(empty) as server:
        r = server.request("GET", "/v2/health/ready")
        assert r.status == 503 and r.json()["ready"] is False
        assert server.request("GET", "/v2/health/live").status == 200
        r = post(server, "/v1/denoise", npy_bytes(np.zeros((8, 8), np.float32)), "application/x-npy", {})
        assert r.status == 404 and r.json()["error"]["code"] == "unknown_model"
        assert server.request("GET", "/v1/models").json()["models"] == []
    log = server.text_log()
    assert "NO MODEL IS LOADED" in log, log
    assert server.proc.returncode == 0


def test_tls_with_rustls(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    port = free_port()
    ctx = ssl.create_default_context(cafile=str(cert))

    def request(method, path, body=None, headers=None):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    log_path = tmp_path / "tls.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ldct_bin("ldct-serve")), "--models", str(models), "--bind",
                                 f"127.0.0.1:{port}", "--device", "cpu", "--tls-cert", str(cert),
                                 "--tls-key", str(key)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.time() + 90
            while True:
                try:
                    if request("GET", "/v2/health/live")[0] == 200:
                        break
                except (OSError, ssl.SSLError):
                    pass
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()
                time.sleep(0.1)
            status, body = request("POST", "/v1/denoise", npy_bytes(np.zeros((16, 16), np.float32)),
                                   {"Content-Type": "application/x-npy"})
            assert status == 200 and npy_load(body).shape == (16, 16)
        finally:
            proc.terminate()
            assert proc.wait(timeout=60) == 0
    assert "listening on https://127.0.0.1" in log_path.read_text()


def test_check_flag_loads_models_and_exits(tmp_path):
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    proc = subprocess.run([str(ldct_bin("ldct-serve")), "--models", str(models), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"] == [{"name": "tiny", "version": "0.1.0"}]
    write_tiny_model(models / "broken", name="broken", onnx_bytes=b"junk")
    proc = subprocess.run([str(ldct_bin("ldct-serve")), "--models", str(models), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "rejected" in proc.stderr
    assert "panicked" not in proc.stderr


def test_the_token_from_a_file_and_an_empty_token_refused(tmp_path):
    """--api-token-file (a mounted Kubernetes secret: one trailing newline) guards the
    routes like --api-token; an empty --api-token stops the server at start with a
    message instead of silently serving without authentication."""
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Server(models, "--api-token-file", token_file, log=tmp_path / "serve.log") as server:
        assert server.request("GET", "/v1/models").status == 401
        r = server.request("GET", "/v1/models", headers=AUTH)
        assert r.status == 200 and r.json()["models"][0]["name"] == "tiny"
        assert TOKEN not in server.text_log()
    for args, words in (
        (["--api-token", ""], "--api-token is empty"),
        (["--api-token-file", str(tmp_path / "missing")], "--api-token-file"),
    ):
        p = subprocess.run(
            [str(ldct_bin("ldct-serve")), "--models", str(models), "--bind", f"127.0.0.1:{free_port()}", *args],
            capture_output=True, text=True, timeout=60,
        )
        assert p.returncode != 0 and words in p.stderr, (args, p.returncode, p.stderr[-500:])


def test_json_logs_carry_the_request_id_and_no_path(tmp_path):
    """`--log-format json`: every line is one JSON object; the request's line names its
    route pattern, status and the caller's x-request-id, never the path (which may
    hold study UIDs)."""
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    server = Server(models, "--log-format", "json")
    rid = "trace-" + uuid.uuid4().hex[:12]
    job = "0123456789abcdef0123456789abcdef"
    with server:
        body = npy_bytes(np.full((16, 16), 40.0, np.float32))
        r = server.request("POST", "/v1/denoise?model=tiny", body=body,
                           headers={"Content-Type": "application/x-npy", "x-request-id": rid})
        assert r.status == 200, r.body[:300]
        assert r.header("x-request-id") == rid
        r = server.request("GET", f"/v1/jobs/{job}")
        assert 400 <= r.status < 600
        made = r.header("x-request-id")
        assert made and made != rid
    assert server.proc.returncode == 0
    lines = [l for l in server.text_log().splitlines() if l.strip()]
    records = [json.loads(l) for l in lines]  # every line parses
    assert all({"timestamp", "level", "fields"} <= rec.keys() for rec in records)
    done = [rec for rec in records if rec["fields"].get("message") == "request"
            and rec.get("span", {}).get("request_id") == rid]
    assert len(done) == 1, lines
    assert done[0]["fields"]["route"] == "/v1/denoise"
    assert done[0]["fields"]["status"] == 200
    assert any(rec.get("span", {}).get("request_id") == made for rec in records)
    assert job not in server.text_log()
    assert any("ONNX Runtime loaded" in rec["fields"].get("message", "")
               and rec["fields"].get("version") for rec in records)
