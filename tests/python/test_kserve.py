"""KServe (k8s/kserve/): the ClusterServingRuntime and InferenceService checked against
KServe's own API models, and the server run exactly as the runtime's container runs it.

KServe's CRDs are not among kubernetes-validate's schemas. The kserve Python SDK
(pinned, downloaded by scripts/setup.sh into .cache/api-schemas, never installed: its
dependencies are heavy) carries the API models generated from the CRDs' OpenAPI
schemas (`openapi_types` + `attribute_map` per class), and the Kubernetes client those
of the core types they embed (V1Container, V1Volume, ...). They are read from the
wheels' source with `ast`, nothing imported; every field of the manifests must exist
in them with the right type.
"""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from test_serve_oip import reference
from test_serve_support import Server, free_port, session, write_tiny_model

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "k8s" / "kserve"
SCHEMAS = ROOT / ".cache" / "api-schemas"
PRIMITIVE = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
             "datetime": str, "date": str}
# What the server speaks (KServe's protocolVersions names).
SERVED_PROTOCOLS = {"v2", "grpc-v2"}


def wheel(prefix: str) -> Path:
    found = sorted(SCHEMAS.glob(f"{prefix}-*.whl"))
    if not found:
        pytest.fail(f"no {prefix} wheel in {SCHEMAS}: run scripts/setup.sh")
    return found[-1]


def model_types(whl: Path, package: str) -> dict[str, dict[str, str]]:
    """Class name -> {JSON key: OpenAPI type} of every generated model in the wheel."""
    out = {}
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if not (name.startswith(package) and name.endswith(".py")):
                continue
            tree = ast.parse(z.read(name))
            for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                types = attrs = None
                for st in cls.body:
                    # `openapi_types = {...}`, or annotated in newer generators.
                    target = (st.targets[0] if isinstance(st, ast.Assign)
                              else st.target if isinstance(st, ast.AnnAssign) else None)
                    if isinstance(target, ast.Name) and st.value is not None:
                        if target.id == "openapi_types":
                            types = ast.literal_eval(st.value)
                        elif target.id == "attribute_map":
                            attrs = ast.literal_eval(st.value)
                if types is not None and attrs is not None:
                    out[cls.name] = {attrs[k]: t for k, t in types.items()}
    return out


def problems(value, typ: str, models: dict, path: str) -> list[str]:
    """Where `value` does not fit the OpenAPI type `typ`."""
    m = re.fullmatch(r"[Ll]ist\[(.+)\]", typ)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in problems(v, m.group(1), models, f"{path}[{i}]")]
    m = re.fullmatch(r"dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\]", typ)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        inner = m.group(2) or m.group(4)
        return [p for k, v in value.items() for p in problems(v, inner, models, f"{path}.{k}")]
    if typ in PRIMITIVE:
        ok = isinstance(value, PRIMITIVE[typ]) and not (typ == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {typ}"]
    if typ not in models:
        return [f"{path}: type {typ} is in neither schema"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({typ})"]
    fields = models[typ]
    out = []
    for k, v in value.items():
        if k not in fields:
            out.append(f"{path}.{k}: no such field in {typ}")
        else:
            out += problems(v, fields[k], models, f"{path}.{k}")
    return out


@pytest.fixture(scope="module")
def schemas():
    kserve = model_types(wheel("kserve"), "kserve/models/")
    k8s = model_types(wheel("kubernetes"), "kubernetes/client/models/")
    assert "V1alpha1ClusterServingRuntime" in kserve and "V1Container" in k8s
    return {**k8s, **kserve}


def manifest(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((KSERVE / name).read_text()) if d]
    return doc


@pytest.fixture(scope="module")
def runtime():
    return manifest("clusterservingruntime.yaml")


@pytest.fixture(scope="module")
def isvc():
    return manifest("inferenceservice.yaml")


@pytest.fixture(scope="module")
def isvc_grpc():
    return manifest("inferenceservice-grpc.yaml")


KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def test_manifests_fit_kserves_api_models(schemas, runtime, isvc, isvc_grpc):
    for doc in (runtime, isvc, isvc_grpc):
        cls = KINDS[(doc["apiVersion"], doc["kind"])]
        assert problems(doc, cls, schemas, doc["kind"]) == []
    # The check can fail: a misspelt field and a wrong type are found.
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    bad["spec"]["containers"][0]["imagePullPolicey"] = "Always"
    bad["spec"]["multiModel"] = "no"
    found = problems(bad, "V1alpha1ClusterServingRuntime", schemas, "r")
    assert any("imagePullPolicey: no such field in V1Container" in p for p in found), found
    assert any("multiModel: 'no' is not bool" in p for p in found), found


def test_the_runtime_and_the_service_fit_together(runtime, isvc):
    spec = runtime["spec"]
    (fmt,) = spec["supportedModelFormats"]
    # Its own format name: KServe never picks Triton (onnx) for ldct's models.
    assert fmt["name"] == "ldct-onnx" and fmt["autoSelect"] is True
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": fmt["name"], "version": fmt["version"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    # Only protocols the server speaks are claimed.
    assert set(spec["protocolVersions"]) <= SERVED_PROTOCOLS, spec["protocolVersions"]
    assert spec["multiModel"] is False
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert "--models=/mnt/models" in c["args"] and "--model-name={{.Name}}" in c["args"]
    # No ports of its own (Knative routes one): REST on 8080 unless the service names
    # the gRPC port h2c; both listeners are always on.
    assert "ports" not in c
    port = 8080
    assert f"--bind=0.0.0.0:{port}" in c["args"]
    assert "--grpc-bind=0.0.0.0:9000" in c["args"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    # Every LDCT_* variable is a documented server flag.
    documented = set(re.findall(r"`(LDCT_[A-Z_]+)`", (ROOT / "serve/README.md").read_text()))
    env = {e["name"] for e in c["env"]}
    assert env <= documented, env - documented
    assert re.search(r"@sha256:[0-9a-f]{64}$", c["image"])


def test_the_grpc_service_routes_the_runtimes_grpc_port(runtime, isvc_grpc):
    (c,) = runtime["spec"]["containers"]
    model = isvc_grpc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert model["runtime"] == runtime["metadata"]["name"]
    (port,) = model["ports"]
    assert port["name"] == "h2c"  # Knative's name for plain-text HTTP/2
    assert f"--grpc-bind=0.0.0.0:{port['containerPort']}" in c["args"]
    # Not applied with the REST service by `kubectl apply -k`.
    kust = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    assert "inferenceservice-grpc.yaml" not in kust["resources"]


def test_the_server_runs_as_the_runtime_container_and_answers_under_the_service_name(
        runtime, isvc, tmp_path):
    """KServe's storage initializer puts the storageUri's model folder at /mnt/models
    and substitutes {{.Name}}: the same here, with the bind address moved to
    127.0.0.1:<free port>. tritonclient then reaches the model under the
    InferenceService's name (and not under its manifest's)."""
    (c,) = runtime["spec"]["containers"]
    name = isvc["metadata"]["name"]
    mnt = tmp_path / "mnt" / "models"
    onnx_path = write_tiny_model(mnt, name="tiny", multiple=8)
    grpc_port = free_port()
    args = [a.replace("{{.Name}}", name).replace("/mnt/models", str(mnt))
            .replace("--grpc-bind=0.0.0.0:9000", f"--grpc-bind=127.0.0.1:{grpc_port}")
            for a in c["args"] if not a.startswith("--bind=")]
    assert f"--grpc-bind=127.0.0.1:{grpc_port}" in args
    server = Server(None, *args, log=tmp_path / "serve.log")
    server.env = {e["name"]: e["value"] for e in c["env"]}
    with server:
        log = server.text_log()
        # The warmup the runtime asks for ran before the server listened.
        assert "warmup_shapes" in log and "1x512x512" in log and "8x512x512" in log, log
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(name)
            assert not client.is_model_ready("tiny")
            meta = client.get_model_metadata(name)
            assert meta["name"] == name and meta["versions"] == ["0.1.0"]
            x = np.linspace(-1, 1, 2 * 24 * 24, dtype=np.float32).reshape(2, 1, 24, 24)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            result = client.infer(name, [inp])
            np.testing.assert_allclose(result.as_numpy("output"), reference(session(onnx_path), x),
                                       atol=1e-5)
            assert result.get_response()["model_name"] == name
        finally:
            client.close()
        # The same model over grpc-v2, under the same name.
        gclient = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        try:
            assert gclient.is_server_ready() and gclient.is_model_ready(name)
            assert not gclient.is_model_ready("tiny")
            ginp = grpcclient.InferInput("input", list(x.shape), "FP32")
            ginp.set_data_from_numpy(x)
            gresult = gclient.infer(name, [ginp])
            np.testing.assert_allclose(gresult.as_numpy("output"), reference(session(onnx_path), x),
                                       atol=1e-5)
            assert gresult.get_response().model_name == name
        finally:
            gclient.close()
        metrics = server.request("GET", "/metrics").body.decode()
        assert f'ldct_model_warmup_duration_seconds_count{{model="{name}"}} 1' in metrics, metrics
