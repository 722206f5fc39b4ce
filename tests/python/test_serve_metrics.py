"""/metrics passes `promtool check metrics`; under overload every request ends 200 or
503 (none hangs, none is dropped) and /metrics counts them all; SIGTERM drains."""

import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from test_serve_support import Server, metric_sum, npy_bytes, write_tiny_model


def denoise(server, body, timeout=120):
    try:
        return server.request("POST", "/v1/denoise", body=body,
                              headers={"Content-Type": "application/x-npy"}, timeout=timeout)
    except OSError as e:  # reported as a failure by the callers
        return e


def test_promtool_accepts_metrics(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install the Debian package prometheus (make setup)"
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    with Server(models) as server:
        assert denoise(server, npy_bytes(np.zeros((32, 32), np.float32))).status == 200
        assert denoise(server, b"bad").status == 400
        assert server.request("GET", "/v2/models/tiny").status == 200
        r = server.request("GET", "/metrics")
        assert r.status == 200
        assert r.header("content-type").startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("ldct_http_requests_total", "ldct_http_request_duration_seconds_bucket",
                 "ldct_inference_duration_seconds_bucket", "ldct_batch_size_bucket", "ldct_queue_depth",
                 "ldct_http_requests_in_flight", "ldct_model_info", "ldct_noise_in_hu_bucket",
                 "ldct_noise_out_hu_bucket", "ldct_errors_total"):
        assert name in text, name
    assert metric_sum(text, "ldct_model_info", name="tiny", version="0.1.0", device="cpu") == 1
    assert metric_sum(text, "ldct_errors_total", kind="invalid_npy") == 1
    assert metric_sum(text, "ldct_http_requests_total", route="/v1/denoise", status="200") == 1


def test_overload_every_request_ends_200_or_503_and_is_counted(tmp_path):
    models = tmp_path / "models"
    # A deliberately slow model (30 blocks) so that 64 requests overrun a queue of 4.
    write_tiny_model(models / "slow", name="slow", depth=30)
    body = npy_bytes(np.random.default_rng(0).normal(0, 50, (256, 256)).astype(np.float32))
    with Server(models, "--queue-capacity", 4, "--max-batch", 2, "--intra-threads", 1) as server:
        start = threading.Barrier(64)

        def one(_):
            start.wait()
            return denoise(server, body)

        t0 = time.time()
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        elapsed = time.time() - t0
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors[:3]
        statuses = [r.status for r in results]
        assert set(statuses) <= {200, 503}, statuses
        ok, busy = statuses.count(200), statuses.count(503)
        assert ok >= 1 and busy >= 1, (ok, busy)
        for r in results:
            if r.status == 503:
                assert r.header("retry-after") == "1"
                assert r.json()["error"]["code"] == "queue_full"
        assert elapsed < 120
        text = server.request("GET", "/metrics").body.decode()
        assert metric_sum(text, "ldct_http_requests_total", route="/v1/denoise") == 64
        assert metric_sum(text, "ldct_http_requests_total", route="/v1/denoise", status="200") == ok
        assert metric_sum(text, "ldct_http_requests_total", route="/v1/denoise", status="503") == busy
        assert metric_sum(text, "ldct_errors_total", kind="queue_full") == busy
        assert metric_sum(text, "ldct_batch_size_count", model="slow") >= 1
        assert metric_sum(text, "ldct_batch_size_sum", model="slow") == ok
        assert metric_sum(text, "ldct_queue_depth") == 0
        # The scrape itself is the only request in flight.
        assert metric_sum(text, "ldct_http_requests_in_flight") == 1


def test_sigterm_drains_in_flight_requests(tmp_path):
    models = tmp_path / "models"
    write_tiny_model(models / "slow", name="slow", depth=30)
    body = npy_bytes(np.zeros((256, 256), np.float32))
    server = Server(models, "--queue-capacity", 16, "--max-batch", 1, "--intra-threads", 1).start()
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(denoise, server, body) for _ in range(6)]
            time.sleep(0.3)  # all six are accepted and queued or running
            server.proc.send_signal(subprocess.signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        assert all(not isinstance(r, Exception) and r.status == 200 for r in results), results
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.kill()
        server.log.close()
    log = server.text_log()
    assert "draining the inference queue" in log and "shutdown complete" in log, log
