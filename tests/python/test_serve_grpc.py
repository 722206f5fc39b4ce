"""The Open Inference Protocol over gRPC (--grpc-bind) against the real binary, with
Triton's own client (tritonclient.grpc): health, metadata, inference at several shapes
(checked against onnxruntime), parameters, errors as gRPC status codes, the repository
extension, and serve/proto/grpc_service.proto checked field by field against the
descriptors tritonclient ships."""

import re

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from conftest import ROOT
from test_serve_oip import reference
from test_serve_support import Server, free_port, session, write_tiny_model

TOKEN = "grpc-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PROTO = ROOT / "serve" / "proto" / "grpc_service.proto"

# protobuf FieldDescriptor types by .proto scalar name.
SCALARS = {"double": 1, "float": 2, "int64": 3, "uint64": 4, "int32": 5, "bool": 8,
           "string": 9, "bytes": 12, "uint32": 13}
MESSAGE, REPEATED = 11, 3


def proto_messages(text: str) -> dict:
    """{qualified message name: {field: (number, type, repeated)}} of a proto3 file
    (messages, nested messages, oneofs and maps; enough for grpc_service.proto)."""
    text = re.sub(r"//[^\n]*", "", text)
    out, stack = {}, []
    for tok in re.finditer(r"message\s+(\w+)\s*\{|oneof\s+\w+\s*\{|\}|"
                           r"(repeated\s+)?(map<\s*\w+\s*,\s*\w+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", text):
        if tok.group(1):
            stack.append(tok.group(1))
            out[".".join(stack)] = {}
        elif tok.group(0).startswith("oneof"):
            stack.append(None)
        elif tok.group(0) == "}":
            if stack:
                stack.pop()
        elif tok.group(5):
            owner = ".".join(s for s in stack if s)
            typ = tok.group(3)
            repeated = bool(tok.group(2)) or typ.startswith("map<")
            kind = MESSAGE if typ.startswith("map<") or typ not in SCALARS else SCALARS[typ]
            out[owner][tok.group(4)] = (int(tok.group(5)), kind, repeated)
    return out


def triton_message(name: str):
    desc = service_pb2.DESCRIPTOR.message_types_by_name[name.split(".")[0]]
    for part in name.split(".")[1:]:
        desc = desc.nested_types_by_name[part]
    return desc


def test_the_proto_matches_tritonclients_descriptors():
    ours = proto_messages(PROTO.read_text())
    assert "ModelInferRequest.InferInputTensor" in ours and len(ours) >= 25, sorted(ours)
    for name, fields in ours.items():
        theirs = triton_message(name)
        for field, (number, kind, repeated) in fields.items():
            f = theirs.fields_by_name[field]
            assert (f.number, f.type, f.label == REPEATED) == (number, kind, repeated), (name, field)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for rpc in re.findall(r"rpc (\w+)\((\w+)\) returns \((\w+)\)", PROTO.read_text()):
        m = service.methods_by_name[rpc[0]]
        assert (m.input_type.name, m.output_type.name) == rpc[1:], rpc
    # The parser can fail: a wrong number is caught.
    broken = proto_messages(PROTO.read_text().replace("string model_name = 1;", "string model_name = 9;"))
    assert broken["ModelInferRequest"]["model_name"][0] == 9


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-grpc")
    models = root / "models"
    onnx_path = write_tiny_model(models / "tiny", multiple=8)
    port = free_port()
    with Server(models, "--api-token", TOKEN, "--grpc-bind", f"127.0.0.1:{port}",
                "--max-body-bytes", 8 << 20, log=root / "serve.log") as server:
        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
        yield client, session(onnx_path), server, models
        client.close()


def infer(client, x, **kw):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("tiny", [inp], headers=AUTH, **kw)


def test_health_and_metadata(served):
    client, _, server, _ = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny", headers=AUTH)
    assert not client.is_model_ready("nope", headers=AUTH)
    meta = client.get_server_metadata(headers=AUTH)
    assert meta.name == "ldct" and "model_repository" in meta.extensions
    m = client.get_model_metadata("tiny", headers=AUTH)
    assert m.name == "tiny" and list(m.versions) == ["0.1.0"] and m.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("input", "FP32", [-1, 1, -1, -1])]
    # 256 MiB of in-flight bytes / 8 MiB messages: 32 gRPC calls at once.
    assert re.search(r"listening on grpc://127\.0\.0\.1:\d+ .*32 calls at once", server.text_log())


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (3, 1, 21, 30), (2, 1, 64, 48), (1, 1, 512, 512)])
def test_infer_matches_onnxruntime_at_several_shapes(served, shape):
    client, sess, _, _ = served
    x = np.random.default_rng(sum(shape)).uniform(-1, 1, shape).astype(np.float32)
    result = infer(client, x, request_id="g-1")
    y = result.as_numpy("output")
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, reference(sess, x), atol=1e-5)
    resp = result.get_response()
    assert resp.model_name == "tiny" and resp.model_version == "0.1.0" and resp.id == "g-1"


def test_parameters_strength_and_hu(served):
    client, _, _, _ = served
    x = np.linspace(-0.5, 0.5, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    # Strength 0 gives the input back exactly.
    y = infer(client, x, parameters={"strength": 0.0}).as_numpy("output")
    np.testing.assert_array_equal(y, x)
    # HU in, HU out.
    hu = (x * 1000).astype(np.float32)
    out = infer(client, hu, parameters={"ldct_units": "hu"}).as_numpy("output")
    norm = infer(client, x).as_numpy("output")
    np.testing.assert_allclose(out, norm * 1000, atol=0.05)


def test_errors_are_grpc_status_codes(served):
    client, _, _, _ = served
    x = np.zeros((1, 1, 8, 8), np.float32)
    cases = [
        (lambda: client.infer("tiny", [grpc_input(x)], headers={"authorization": "Bearer wrong"}),
         "StatusCode.UNAUTHENTICATED"),
        (lambda: client.infer("tiny", [grpc_input(x)]), "StatusCode.UNAUTHENTICATED"),
        (lambda: client.infer("nope", [grpc_input(x)], headers=AUTH), "StatusCode.NOT_FOUND"),
        (lambda: client.infer("tiny", [grpc_input(x, name="wrong")], headers=AUTH),
         "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("tiny", [grpc_input(np.zeros((1, 2, 8, 8), np.float32))], headers=AUTH),
         "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("tiny", [grpc_input(np.full((1, 1, 8, 8), np.nan, np.float32))], headers=AUTH),
         "StatusCode.INVALID_ARGUMENT"),
        # A slice over --max-slice-side (2048), refused from its declared shape.
        (lambda: client.infer("tiny", [grpc_input(np.zeros((1, 1, 3000, 100), np.float32))], headers=AUTH),
         "StatusCode.RESOURCE_EXHAUSTED"),
        # A message over --max-body-bytes (8 MiB here) is refused by tonic unread.
        (lambda: client.infer("tiny", [grpc_input(np.zeros((1, 1, 2048, 2048), np.float32))], headers=AUTH),
         "StatusCode.OUT_OF_RANGE"),
    ]
    for call, code in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == code, (code, e.value)


def grpc_input(x, name="input"):
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_the_repository_over_grpc(served):
    client, _, _, models = served
    index = client.get_model_repository_index(headers=AUTH)
    assert [(m.name, m.version, m.state) for m in index.models] == [("tiny", "0.1.0", "READY")]
    write_tiny_model(models / "extra", name="extra", version="2.0.0", multiple=8)
    client.load_model("extra", headers=AUTH)
    assert client.is_model_ready("extra", headers=AUTH)
    client.unload_model("extra", headers=AUTH)
    assert not client.is_model_ready("extra", headers=AUTH)
    states = {m.name: m.state for m in client.get_model_repository_index(headers=AUTH).models}
    assert states == {"tiny": "READY", "extra": "UNAVAILABLE"}
    with pytest.raises(InferenceServerException) as e:
        client.load_model("nope", headers=AUTH)
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_the_metrics_count_grpc_calls(served):
    _, _, server, _ = served
    text = server.request("GET", "/metrics").body.decode()
    assert re.search(r'ldct_grpc_requests_total\{code="OK",method="ModelInfer"\} [1-9]', text), text
    assert re.search(r'ldct_grpc_requests_total\{code="Unauthenticated",method="ModelInfer"\} [1-9]', text)


def test_a_raw_grpc_channel_without_tritonclient_gets_unimplemented_for_other_methods(served):
    """Methods outside the implemented set answer UNIMPLEMENTED (no crash, no hang)."""
    client, _, server, _ = served
    port = int(re.search(r"listening on grpc://127\.0\.0\.1:(\d+)", server.text_log()).group(1))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                              request_serializer=service_pb2.ModelStatisticsRequest.SerializeToString,
                              response_deserializer=service_pb2.ModelStatisticsResponse.FromString)
        with pytest.raises(grpc.RpcError) as e:
            call(service_pb2.ModelStatisticsRequest(name="tiny"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
