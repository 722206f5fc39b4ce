"""Open Inference Protocol v2 against the real binary with Triton's own client
(tritonclient.http): health, metadata, infer with JSON and binary tensors."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_serve_support import Server, denormalise, outside_window_weight, session, write_tiny_model

TOKEN = "oip-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    models = tmp_path_factory.mktemp("serve-oip") / "models"
    onnx_path = write_tiny_model(models / "tiny", multiple=8)
    with Server(models, "--api-token", TOKEN) as server:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        yield client, session(onnx_path)
        client.close()


def reference(sess, x, multiple=8):
    """Normalised in, normalised out: reflect pad per slice, run, crop, then the pixel
    contract's composition with the input (the input's weight rises near the window's
    top, where x approaches 1: HU above the window pass through)."""
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (0, -h % multiple), (0, -w % multiple)), mode="reflect")
    (y,) = sess.run(["output"], {"input": xp.astype(np.float32)})
    y = y[:, :, :h, :w].astype(np.float64)
    weight = outside_window_weight(denormalise(x))
    return (x + weight * (y - x)).astype(np.float32)


def test_health_needs_no_token(triton):
    client, _ = triton
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny", headers=HEADERS)
    assert not client.is_model_ready("nope", headers=HEADERS)


def test_metadata(triton):
    client, _ = triton
    server = client.get_server_metadata(headers=HEADERS)
    assert server["name"] == "ldct"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("tiny", headers=HEADERS)
    assert meta["name"] == "tiny" and meta["versions"] == ["0.1.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert meta["outputs"][0]["name"] == "output"
    assert meta["parameters"]["device"] == "cpu"
    assert client.get_model_metadata("tiny", "0.1.0", headers=HEADERS)["name"] == "tiny"
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("tiny", "9.9", headers=HEADERS)
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("tiny")  # no token


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_onnxruntime(triton, binary):
    client, sess = triton
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (3, 1, 21, 30)).astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer("tiny", [inp], outputs=[out], request_id="r-1", headers=HEADERS)
    y = result.as_numpy("output")
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, reference(sess, x), atol=1e-5)
    resp = result.get_response()
    assert resp["model_name"] == "tiny" and resp["model_version"] == "0.1.0" and resp["id"] == "r-1"


def test_infer_default_outputs_and_versioned_route(triton):
    client, sess = triton
    x = np.linspace(-1, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    # No outputs named: tritonclient asks for every output in binary.
    result = client.infer("tiny", [inp], model_version="0.1.0", headers=HEADERS)
    np.testing.assert_allclose(result.as_numpy("output"), reference(sess, x), atol=1e-5)


def test_infer_errors(triton):
    client, _ = triton
    x = np.zeros((1, 3, 8, 8), np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tiny", [inp], headers=HEADERS)
    assert e.value.status() == "400"
    x = np.zeros((1, 1, 8, 8), np.float64)
    inp = httpclient.InferInput("input", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer("tiny", [inp], headers=HEADERS)
    assert e.value.status() == "400"
    x = np.zeros((1, 1, 8, 8), np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [inp], headers=HEADERS)
    assert e.value.status() == "404"
    # The protocol's error body, {"error": "<string>"}: tritonclient reads the message.
    assert isinstance(e.value.message(), str), e.value.message()
    assert 'unknown model "nope"' in e.value.message()
    # The server still serves.
    assert client.infer("tiny", [inp], headers=HEADERS).as_numpy("output").shape == (1, 1, 8, 8)
