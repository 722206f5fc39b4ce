"""Hostile input against the real ldct-serve: oversized slices refused from their
headers, decompression bombs refused unread, multi-frame instances refused before
decoding, OIP requests that could never be admitted, slow bodies and multipart bodies
whose part headers are the payload. Memory is the server's own peak RSS (VmHWM in
/proc/PID/status), read after each attack."""

import http.client
import io
import json
import socket
import struct
import time
import zlib

import numpy as np
import pydicom
import pydicom._uid_dict
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from test_serve_support import Server, npy_bytes, write_tiny_model

LIMIT = 8 << 20  # --max-body-bytes
QUEUE = 4  # --queue-capacity
BODY_TIMEOUT = 2  # --body-timeout, seconds
GiB = 1 << 30
DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"
# pydicom 3.0 does not know this (2023) transfer syntax yet: teach it the standard's
# name so it writes the file meta group with it (explicit VR little endian, encapsulated).
pydicom._uid_dict.UID_dictionary.setdefault(
    DEFLATED_FRAMES, ("Deflated Image Frame Compression", "Transfer Syntax", "", "",
                      "DeflatedImageFrameCompression"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-hostile")
    write_tiny_model(root / "models" / "tiny")
    s = Server(root / "models", "--max-body-bytes", LIMIT, "--queue-capacity", QUEUE,
               "--max-batch", 2, "--body-timeout", BODY_TIMEOUT)
    with s:
        yield s
    assert s.proc.returncode == 0, s.text_log()


def peak_rss(server) -> int:
    """The server's peak resident set (bytes) since it started."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def post(server, path, body, ctype, headers=None):
    return server.request("POST", path, body=body, headers={"Content-Type": ctype, **(headers or {})})


def ct_dataset(rows, cols, ts, frames=1):
    """A CT image data set (no pixel data yet) with file meta for transfer syntax `ts`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def rle_constant_frame(pixels: int, value: int) -> bytes:
    """An RLE Lossless frame (PS3.5 G) of `pixels` 16-bit samples all equal to `value`:
    two byte segments (high, low) of 128-byte replicate runs."""
    def segment(byte):
        runs, rest = divmod(pixels, 128)
        out = bytes([0x81, byte]) * runs  # -127: repeat the next byte 128 times
        if rest:
            out += bytes([(257 - rest) & 0xFF, byte])
        return out + (b"\x00" if len(out) % 2 else b"")
    hi, lo = segment((value >> 8) & 0xFF), segment(value & 0xFF)
    header = struct.pack("<16I", 2, 64, 64 + len(hi), *([0] * 13))
    return header + hi + lo


def test_rle_codec_is_what_pydicom_decodes():
    # The hand-made RLE frame above is real RLE: pydicom decodes it to the value.
    ds = ct_dataset(64, 64, RLELossless)
    ds.PixelData = encapsulate([rle_constant_frame(64 * 64, 40)])
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ds)))
    assert (ds.pixel_array == 40).all()


def test_a_4096_square_rle_slice_is_refused_from_its_header(server):
    ds = ct_dataset(4096, 4096, RLELossless)
    ds.PixelData = encapsulate([rle_constant_frame(4096 * 4096, 40)])
    body = dicom_bytes(ds)
    assert len(body) < 1 << 20  # half a mebibyte that decodes to 32 MiB of samples
    r = post(server, "/v1/denoise", body, "application/dicom")
    assert r.status == 413, r.body
    err = r.json()["error"]
    assert err["code"] == "slice_too_large" and "4096x4096" in err["message"], err
    assert peak_rss(server) < GiB
    # The server keeps serving.
    ok = post(server, "/v1/denoise", npy_bytes(np.zeros((64, 64), np.float32)), "application/x-npy")
    assert ok.status == 200, ok.body


def test_a_deflated_frame_bomb_is_refused_unread(server):
    # 512 x 512 x 16 bits declares 512 KiB; the frame inflates to 2 GiB.
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(64 << 20)
    frame = b"".join(c.compress(chunk) for _ in range(32)) + c.flush()
    assert len(frame) < 4 << 20
    ds = ct_dataset(512, 512, DEFLATED_FRAMES)
    ds.PixelData = encapsulate([frame])
    r = post(server, "/v1/denoise", dicom_bytes(ds), "application/dicom")
    assert r.status == 422, r.body
    assert "deflate bomb" in r.json()["error"]["message"], r.body
    assert peak_rss(server) < GiB


def test_a_deflated_frame_of_the_declared_size_is_decoded(server):
    hu = (np.arange(64 * 64, dtype=np.int16).reshape(64, 64) % 2000) - 1000
    ds = ct_dataset(64, 64, DEFLATED_FRAMES)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    ds.PixelData = encapsulate([c.compress(hu.astype("<i2").tobytes()) + c.flush()])
    r = post(server, "/v1/denoise?strength=0", dicom_bytes(ds), "application/dicom")
    assert r.status == 200, r.body
    out = pydicom.dcmread(io.BytesIO(r.body))
    got = out.pixel_array * float(out.RescaleSlope) + float(out.RescaleIntercept)
    # Strength 0 gives the input back (the derived instance's rescale may quantise).
    assert np.abs(got - hu).max() <= 1.0


def test_multi_frame_instances_are_refused_before_decoding(server):
    frames = 256
    ds = ct_dataset(512, 512, RLELossless, frames=frames)
    ds.PixelData = encapsulate([rle_constant_frame(512 * 512, 0)] * frames)
    body = dicom_bytes(ds)
    before = peak_rss(server)
    r = post(server, "/v1/denoise", body, "application/dicom")
    assert r.status == 422, r.body
    assert "256 frames" in r.json()["error"]["message"], r.body
    # 256 decoded frames would be 256 MiB of HU; refused from the header, the peak
    # grows by little more than the body.
    assert peak_rss(server) - before < 64 << 20


@pytest.mark.parametrize("ts,marker", [("1.2.840.10008.1.2.4.90", "SIZ"), ("1.2.840.10008.1.2.4.70", "SOF")])
def test_a_compressed_frame_without_a_findable_header_is_refused_undecoded(server, ts, marker):
    # JPEG 2000 lossless / JPEG lossless whose frame does not start with its codestream
    # header: nothing bounds what the decoder would allocate, so it is not called.
    ds = ct_dataset(512, 512, ts)
    ds.PixelData = encapsulate([b"\x00\x01" * 2048])
    r = post(server, "/v1/denoise", dicom_bytes(ds), "application/dicom")
    assert r.status == 422, r.body
    message = r.json()["error"]["message"]
    assert f"({marker})" in message and "before decoding" in message, message


def test_a_one_row_npy_is_refused_from_its_header(server):
    r = post(server, "/v1/denoise", npy_bytes(np.zeros((1, 1 << 20), np.float32)),
             "application/x-npy")
    assert r.status == 413, r.body
    assert r.json()["error"]["code"] == "slice_too_large"


def test_oip_more_slices_than_the_queue_holds_is_413_not_a_retry_loop(server):
    n = QUEUE + 1
    req = {"inputs": [{"name": "input", "shape": [n, 1, 16, 16], "datatype": "FP32",
                       "data": [0.0] * (n * 256)}]}
    r = post(server, "/v2/models/tiny/infer", json.dumps(req), "application/json")
    assert r.status == 413, r.body
    assert r.header("retry-after") is None
    msg = r.json()["error"]
    assert isinstance(msg, str) and f"{n} slices" in msg and str(QUEUE) in msg, msg
    # At the capacity it is served.
    req["inputs"][0].update(shape=[QUEUE, 1, 16, 16], data=[0.0] * (QUEUE * 256))
    assert post(server, "/v2/models/tiny/infer", json.dumps(req), "application/json").status == 200


def test_oip_shape_over_the_slice_limit_is_refused_before_its_data(server):
    req = {"inputs": [{"name": "input", "shape": [1, 1, 4096, 4096], "datatype": "FP32",
                       "data": [0.0]}]}
    r = post(server, "/v2/models/tiny/infer", json.dumps(req), "application/json")
    assert r.status == 413, r.body
    assert "4096x4096" in r.json()["error"]


def test_oip_nested_json_data_is_read_without_a_json_tree(server):
    # 512 rows of 512 numbers, nested as [N][C][H][W]: decoded straight into floats.
    img = np.random.default_rng(3).normal(0, 0.1, (512, 512)).astype(np.float32)
    req = {"inputs": [{"name": "input", "shape": [1, 1, 512, 512], "datatype": "FP32",
                       "data": [[img.tolist()]]}]}
    r = post(server, "/v2/models/tiny/infer", json.dumps(req), "application/json")
    assert r.status == 200, r.body
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 1, 512, 512] and len(out["data"]) == 512 * 512


def test_a_slow_body_gets_408_and_the_connection_is_freed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/denoise HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/x-npy\r\nContent-Length: 100000\r\n\r\n")
        s.sendall(b"\x93NUMPY")  # then nothing
        t0 = time.monotonic()
        reply = s.recv(4096)
        waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body_timeout" in reply
    assert waited < 20, waited


def test_multipart_part_headers_count_against_the_body_limit(server):
    # Sent chunked (no Content-Length to refuse early): every byte of the part headers
    # counts, not only the parts' payloads.
    boundary = "b0undary"
    filler = "X-Filler: " + "a" * 1000 + "\r\n"
    part_headers = filler * ((LIMIT // len(filler)) + 64)  # more than the limit in headers
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"input\"\r\n{part_headers}\r\n"
            ).encode() + npy_bytes(np.zeros((16, 16), np.float32)) + f"\r\n--{boundary}--\r\n".encode()
    assert len(body) > LIMIT
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/evaluate", body=(body[i:i + (1 << 16)] for i in range(0, len(body), 1 << 16)),
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                     encode_chunked=True)
        r = conn.getresponse()
        status, text = r.status, r.read()
    finally:
        conn.close()
    assert status == 413, text
    assert peak_rss(server) < GiB


def test_evaluate_still_reads_form_data_parts(server):
    boundary = "----ldct" + "7" * 10
    img = np.zeros((32, 32), np.float32)
    parts = []
    for name in ("input", "reference"):
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                     f"filename=\"{name}.npy\"\r\nContent-Type: application/x-npy\r\n\r\n".encode()
                     + npy_bytes(img) + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    r = post(server, "/v1/evaluate", body, f"multipart/form-data; boundary={boundary}")
    assert r.status == 200, r.body
    assert r.json()["shape"] == [32, 32]


def test_concurrent_uploads_beyond_the_inflight_budget_get_503_before_their_bodies(tmp_path):
    # 40 uploads of a 1024x1024 float32 slice (4 MiB each, 160 MiB together) against a
    # 16 MiB budget: each sends its headers, and those the budget cannot hold are told
    # 503 with Retry-After before they send a byte of body; the rest are served.
    write_tiny_model(tmp_path / "models" / "tiny")
    budget, n = 16 << 20, 40
    body = npy_bytes(np.zeros((1024, 1024), np.float32))
    head = (b"POST /v1/denoise HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with Server(tmp_path / "models", "--max-body-bytes", LIMIT, "--max-inflight-bytes", budget,
                "--request-timeout", 120) as s:
        socks = [socket.create_connection(("127.0.0.1", s.port), timeout=120) for _ in range(n)]
        try:
            for sock in socks:
                sock.sendall(head)
            time.sleep(1.0)
            refused, admitted = [], []
            for sock in socks:
                sock.settimeout(0.2)
                try:
                    reply = sock.recv(65536)
                except socket.timeout:
                    admitted.append(sock)
                    continue
                refused.append(reply)
            assert len(admitted) <= budget // len(body), len(admitted)
            assert len(refused) >= n - budget // len(body)
            for reply in refused:
                assert reply.startswith(b"HTTP/1.1 503"), reply[:300]
                assert b"retry-after:" in reply.lower() and b'"busy"' in reply
            for sock in admitted:
                sock.settimeout(120)
                sock.sendall(body)
                reply = b""
                while b"\r\n\r\n" not in reply:
                    reply += sock.recv(65536)
                assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        finally:
            for sock in socks:
                sock.close()
        # After the admitted ones finished, the budget is whole again.
        r = post(s, "/v1/denoise", body, "application/x-npy")
        assert r.status == 200, r.body
        assert peak_rss(s) < GiB


def _vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/PID/status")


@pytest.mark.parametrize("arena", [False, True])
def test_the_memory_of_a_large_slice_returns_after_its_batch_unless_the_arena_keeps_it(tmp_path, arena):
    # A 2048x2048 slice through an 8-layer model: ONNX Runtime's intermediate tensors
    # take a few hundred MiB. By default the CPU arena keeps only the memory of batches
    # up to --cpu-arena-keep-pixels (8 x 512 x 512) and shrinks after larger ones, so
    # the server's resident memory falls back once the batch is done; with --cpu-arena
    # (never shrink) it stays.
    write_tiny_model(tmp_path / "models" / "tiny", depth=8)
    extra = ["--cpu-arena"] if arena else []
    with Server(tmp_path / "models", "--max-body-bytes", 32 << 20, *extra) as s:
        body = npy_bytes(np.zeros((2048, 2048), np.float32))
        before = _vm(s.proc.pid, "VmRSS:")
        r = post(s, "/v1/denoise", body, "application/x-npy")
        assert r.status == 200, r.body
        time.sleep(0.5)
        peak, after = _vm(s.proc.pid, "VmHWM:"), _vm(s.proc.pid, "VmRSS:")
    assert peak - before > 128 << 20, (before, peak)
    if arena:
        assert after - before > 128 << 20, (before, peak, after)
    else:
        assert after - before < 48 << 20, (before, peak, after)
