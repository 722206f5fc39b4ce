"""The model repository extension with Triton's own client (tritonclient.http): a second
version of a model is loaded and unloaded, and another model unloaded and loaded again,
while a load test runs against the first version, with no failed request."""

import shutil
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_serve_oip import reference
from test_serve_support import Server, session, write_tiny_model


def infer(client, x, version=""):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer("tiny", [inp], model_version=version).as_numpy("output")


def index(client):
    return {(e["name"], e["version"]): e["state"] for e in client.get_model_repository_index()}


def test_versions_load_and_unload_under_load_without_a_failed_request(tmp_path):
    models = tmp_path / "models"
    v1 = write_tiny_model(models / "tiny" / "1", version="0.1.0", multiple=8)
    write_tiny_model(models / "other", name="other", version="1.0.0", multiple=8)
    x = np.linspace(-1, 1, 2 * 32 * 32, dtype=np.float32).reshape(2, 1, 32, 32)
    expected_v1 = reference(session(v1), x)

    with Server(models, "--version-policy", "all", "--max-batch", 4) as server:
        url = f"127.0.0.1:{server.port}"
        client = httpclient.InferenceServerClient(url=url)
        assert "model_repository" in client.get_server_metadata()["extensions"]
        assert index(client) == {("other", "1.0.0"): "READY", ("tiny", "0.1.0"): "READY"}

        stop = threading.Event()
        counts = {"ok": 0, "failed": 0, "wrong": 0}
        errors = []
        lock = threading.Lock()

        def load_test(version):
            c = httpclient.InferenceServerClient(url=url)
            try:
                while not stop.is_set():
                    try:
                        y = infer(c, x, version)
                        ok = np.allclose(y, expected_v1, atol=1e-5)
                        with lock:
                            counts["ok" if ok else "wrong"] += 1
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        with lock:
                            counts["failed"] += 1
                            errors.append(repr(e))
            finally:
                c.close()

        # Unversioned requests go to the highest version, so they run while only 0.1.0
        # is served; the versioned ones run throughout.
        threads = [threading.Thread(target=load_test, args=("0.1.0",)) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            # A second version appears and is loaded beside the first.
            v2 = write_tiny_model(models / "tiny" / "2", version="0.2.0", multiple=8, depth=2)
            client.load_model("tiny")
            assert index(client) == {("other", "1.0.0"): "READY", ("tiny", "0.1.0"): "READY",
                                     ("tiny", "0.2.0"): "READY"}
            assert client.get_model_metadata("tiny")["versions"] == ["0.1.0", "0.2.0"]
            np.testing.assert_allclose(infer(client, x, "0.2.0"), reference(session(v2), x), atol=1e-5)
            np.testing.assert_allclose(infer(client, x), reference(session(v2), x), atol=1e-5)
            assert client.is_model_ready("tiny", "0.2.0")
            time.sleep(0.5)

            # Another model is unloaded and loaded again.
            client.unload_model("other")
            assert not client.is_model_ready("other")
            assert index(client)[("other", "1.0.0")] == "UNAVAILABLE"
            with pytest.raises(InferenceServerException):
                client.get_model_metadata("other")
            client.load_model("other")
            assert client.is_model_ready("other")

            # The second version goes away again (folder removed, model loaded).
            shutil.rmtree(models / "tiny" / "2")
            client.load_model("tiny")
            assert not client.is_model_ready("tiny", "0.2.0")
            assert client.is_model_ready("tiny", "0.1.0")
            assert ("tiny", "0.2.0") not in index(client)
            np.testing.assert_allclose(infer(client, x), expected_v1, atol=1e-5)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
            client.close()
        print(f"repository under load: {counts['ok']} requests ok, {counts['failed']} failed, "
              f"{counts['wrong']} wrong")
        assert counts["failed"] == 0 and counts["wrong"] == 0, errors[:5]
        assert counts["ok"] >= 20, counts

        # Unknown models are refused in the protocol's form.
        with pytest.raises(InferenceServerException, match="nope"):
            httpclient.InferenceServerClient(url=url).load_model("nope")
