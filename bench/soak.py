#!/usr/bin/env python3
"""Soak ldct-serve: valid and hostile requests together for a fixed time, on loopback.

    make bench-soak                                  # release build, models/default, 10 min
    python bench/soak.py --bin target/release/ldct-serve [--model DIR] [--duration 600]

`--clients` keep-alive clients send valid slices back to back (a closed loop: the
server's sustainable rate, whatever the machine): 512x512 .npy and DICOM bodies to
/v1/denoise and binary Open Inference Protocol requests. One more client sends hostile
requests without pause: garbage and truncated bodies, a 1x1048576 .npy, a 4096x4096
RLE DICOM header, a deflated-frame bomb, an OIP request declaring a huge shape, a
multipart body without its closing delimiter, an oversized Content-Length, a body that
stops half way (the connection dropped). The server's VmRSS is sampled every few
seconds.

Reports: requests and statuses by kind, latency p50 / p99 of the valid requests, RSS
per minute, and three checks: no 5xx but 503/504 (overload answers), every valid request
answered 200 or 503/504, and RSS at the end within 10 % of RSS at the end of the warm-up.
Exit status 1 when a check fails. Never a timed assertion in a test: this is a bench.
"""

import argparse
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name  # noqa: E402
from serve import free_port, npy, slice_512, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"


def _teach_pydicom():
    """pydicom 3.0 does not know Deflated Image Frame Compression (2023) yet: give it the
    standard's name so it writes the file meta group with that transfer syntax."""
    import pydicom._uid_dict

    pydicom._uid_dict.UID_dictionary.setdefault(
        DEFLATED_FRAMES, ("Deflated Image Frame Compression", "Transfer Syntax", "", "",
                          "DeflatedImageFrameCompression"))


def dicom_bytes(hu: np.ndarray, ts="1.2.840.10008.1.2.1", pixel=None, frames=1, rows=None, cols=None):
    """A CT slice written by pydicom (int16 stored values, slope 1, intercept -1024)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    _teach_pydicom()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows or hu.shape[0], cols or hu.shape[1]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if pixel is None:
        pixel = np.clip(hu + 1024, -32768, 32767).astype("<i2").tobytes()
    ds.PixelData = pixel
    if ts not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def valid_requests(hu):
    from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

    inp = InferInput("input", [1, 1, *hu.shape], "FP32")
    inp.set_data_from_numpy(hu[None, None].astype(np.float32), binary_data=True)
    body, json_len = InferenceServerClient.generate_request_body(
        [inp], outputs=[InferRequestedOutput("output", binary_data=True)], parameters={"ldct_units": "hu"})
    return {
        "npy": ("/v1/denoise", npy(hu.astype(np.float32)), {"Content-Type": "application/x-npy"}),
        "dicom": ("/v1/denoise", dicom_bytes(hu), {"Content-Type": "application/dicom"}),
        "oip": ("/v2/models/{model}/infer", body,
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_len)}),
    }


def hostile_requests(hu):
    from pydicom.encaps import encapsulate

    rle_header = struct.pack("<16I", 1, 64, *([0] * 14))
    # 64 MiB of zeros in about 64 KiB, raw deflate as the transfer syntax has it.
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packer.compress(bytes(64 << 20)) + packer.flush()
    good = dicom_bytes(hu)
    boundary = "soak"
    return {
        "garbage": ("/v1/denoise", os.urandom(4096), {"Content-Type": "application/dicom"}),
        "truncated_dicom": ("/v1/denoise", good[: len(good) // 2], {"Content-Type": "application/dicom"}),
        "npy_1x1048576": ("/v1/denoise", npy(np.zeros((1, 1 << 20), np.float32)), {"Content-Type": "application/x-npy"}),
        "rle_4096": ("/v1/denoise", dicom_bytes(hu, "1.2.840.10008.1.2.5", encapsulate([rle_header + bytes(64)]),
                                                rows=4096, cols=4096), {"Content-Type": "application/dicom"}),
        "deflate_bomb": ("/v1/denoise", dicom_bytes(hu, DEFLATED_FRAMES, encapsulate([bomb])),
                         {"Content-Type": "application/dicom"}),
        "oip_huge_shape": ("/v2/models/{model}/infer",
                           json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 100000, 100000],
                                                   "datatype": "FP32", "data": [0.0]}]}).encode(),
                           {"Content-Type": "application/json"}),
        "multipart_unclosed": ("/v1/evaluate",
                               f"--{boundary}\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\n".encode()
                               + npy(hu.astype(np.float32)),
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
        "wrong_type": ("/v1/denoise", b"{}", {"Content-Type": "text/plain"}),
    }


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = defaultdict(Counter)
        self.latency = []
        self.errors = Counter()

    def add(self, kind, status, seconds=None):
        with self.lock:
            self.status[kind][status] += 1
            if seconds is not None and status == 200:
                self.latency.append(seconds)


def send(conn, path, body, headers):
    t = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status, time.perf_counter() - t


def client_loop(port, requests, stats, stop, record_latency, seed):
    rng = random.Random(seed)
    kinds = sorted(requests)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        kind = rng.choice(kinds)
        path, body, headers = requests[kind]
        try:
            status, seconds = send(conn, path, body, headers)
            stats.add(kind, status, seconds if record_latency else None)
            if status >= 400 or record_latency is False:
                conn.close()  # the server may close after an error; start clean
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        except (OSError, http.client.HTTPException) as e:
            stats.add(kind, type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def raw_hostile_loop(port, stats, stop, body_bytes):
    """Requests that misuse the connection: an oversized Content-Length, and a body
    dropped half way."""
    while not stop.is_set():
        for kind in ("oversized_length", "dropped_body"):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    length = (1 << 40) if kind == "oversized_length" else len(body_bytes)
                    s.sendall(b"POST /v1/denoise HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                              + f"Content-Length: {length}\r\n\r\n".encode())
                    if kind == "oversized_length":
                        reply = s.recv(4096)
                        stats.add(kind, int(reply[9:12]) if reply.startswith(b"HTTP/1.1") else "no reply")
                    else:
                        s.sendall(body_bytes[: len(body_bytes) // 2])
                        time.sleep(0.2)
                        stats.add(kind, "dropped")
            except OSError as e:
                stats.add(kind, type(e).__name__)
            time.sleep(0.5)


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "ldct-serve"))
    ap.add_argument("--model", default=str(ROOT / "models" / "default"), help="model folder")
    ap.add_argument("--duration", type=float, default=600, help="seconds of load after the warm-up")
    ap.add_argument("--warmup", type=float, default=60, help="seconds of load before RSS is taken as the start")
    ap.add_argument("--clients", type=int, default=2, help="valid-request clients (closed loop)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--sample", type=float, default=5, help="seconds between RSS samples")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    model_dir = Path(args.model).resolve()
    model = json.loads((model_dir / "manifest.json").read_text())["name"]
    hu, source = slice_512()
    valid = {k: (p.format(model=model), b, h) for k, (p, b, h) in valid_requests(hu).items()}
    hostile = {k: (p.format(model=model), b, h) for k, (p, b, h) in hostile_requests(hu).items()}

    tmp = tempfile.TemporaryDirectory(prefix="ldct-soak-")
    models_root = Path(tmp.name) / "models"
    models_root.mkdir()
    (models_root / model_dir.name).symlink_to(model_dir)
    port = free_port()
    log = open(Path(tmp.name) / "serve.log", "wb")
    cmd = [args.bin, "--models", str(models_root), "--bind", f"127.0.0.1:{port}", "--device", "cpu",
           "--intra-threads", str(args.threads), "--body-timeout", "10"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    stats, warm_stats = Stats(), Stats()
    samples = []
    try:
        wait_ready(proc, port, Path(tmp.name) / "serve.log", 300)
        print(f"# soak: {cpu_name()} ({', '.join(cpu_flags())}), {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}; model {model} ({model_dir}); slice {source}")
        print(f"# {args.clients} valid clients + 2 hostile clients; warm-up {args.warmup:.0f} s, "
              f"then {args.duration:.0f} s")

        def run_phase(seconds, st):
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop, args=(port, valid, st, stop, True, i), daemon=True)
                       for i in range(args.clients)]
            threads.append(threading.Thread(target=client_loop, args=(port, hostile, st, stop, False, 99),
                                            daemon=True))
            threads.append(threading.Thread(target=raw_hostile_loop, args=(port, st, stop, valid["npy"][1]),
                                            daemon=True))
            for t in threads:
                t.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end and proc.poll() is None:
                samples.append((time.monotonic(), vm_rss(proc.pid)))
                time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
            stop.set()
            for t in threads:
                t.join(timeout=150)

        t0 = time.monotonic()
        run_phase(args.warmup, warm_stats)
        rss_start = vm_rss(proc.pid)
        t_start = time.monotonic()
        run_phase(args.duration, stats)
        rss_end = vm_rss(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

    print("\n| kind | requests | statuses |\n|---|---:|---|")
    for kind in sorted(stats.status):
        c = stats.status[kind]
        print(f"| {kind}{' (valid)' if kind in valid else ''} | {sum(c.values())} | "
              f"{', '.join(f'{s}: {n}' for s, n in sorted(c.items(), key=str))} |")
    lat = np.asarray(stats.latency) * 1000
    n_valid = sum(sum(stats.status[k].values()) for k in valid)
    print(f"\nvalid requests: {n_valid} in {args.duration:.0f} s ({n_valid / args.duration:.2f}/s); "
          f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms"
          if len(lat) else "\nno valid request answered 200")
    print("\nRSS by minute (MiB): " + ", ".join(
        f"{(t - t0) / 60:.0f}: {r / 2**20:.0f}" for t, r in samples[:: max(1, int(60 / args.sample))]))
    bad_5xx = {k: {s: n for s, n in c.items() if isinstance(s, int) and s >= 500 and s not in (503, 504)}
               for k, c in stats.status.items()}
    bad_5xx = {k: v for k, v in bad_5xx.items() if v}
    valid_bad = {k: {s: n for s, n in stats.status[k].items() if s not in (200, 503, 504)} for k in valid}
    valid_bad = {k: v for k, v in valid_bad.items() if v}
    drift = (rss_end - rss_start) / rss_start if rss_start else float("inf")
    checks = {
        "server alive at the end": alive,
        "no 5xx but 503/504": not bad_5xx,
        "every valid request 200 (or 503/504)": not valid_bad,
        f"RSS end within 10 % of start ({rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB, {drift:+.1%})":
            abs(drift) <= 0.10,
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if bad_5xx:
        print("  unexpected 5xx:", bad_5xx)
    if valid_bad:
        print("  valid requests not answered 200:", valid_bad)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_name(), "flags": cpu_flags(), "duration_s": args.duration, "warmup_s": args.warmup,
            "statuses": {k: {str(s): n for s, n in c.items()} for k, c in stats.status.items()},
            "latency_ms": {"p50": float(np.percentile(lat, 50)) if len(lat) else None,
                           "p99": float(np.percentile(lat, 99)) if len(lat) else None},
            "rss_start": rss_start, "rss_end": rss_end,
            "rss_samples": [(round(t - t0, 1), r) for t, r in samples],
            "checks": checks}, indent=2))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
