"""Kubernetes manifests and Dockerfiles (issue 9): offline validation.

- The kustomizations (overlays/cpu, overlays/gpu, retrain, batch) are rendered with
  `kubectl kustomize` (kustomize built into kubectl) when kubectl is installed;
  without it, the plain files are checked one by one (the gpu overlay's JSON 6902
  patches are then only linted).
- `kubernetes-validate --strict` against Kubernetes 1.32 (schemas ship in the
  package, no network). The ServiceMonitor is a CRD the package has no schema for:
  it is reported as a warning there and checked by hand here.
- `yamllint` with k8s/.yamllint on every source YAML file.
- `checkov` (kubernetes + dockerfile) with k8s/.checkov.yaml, `--skip-download`,
  zero failed checks, under a timeout (no network use).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent
KUBE_VERSION = "1.32.0"
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "retrain", "batch"]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def tool(name: str) -> str:
    path = VENV_BIN / name
    if name == "checkov":
        # Its own venv (see scripts/setup.sh): its pins conflict with .venv's.
        path = ROOT / ".venv-checkov" / "bin" / "checkov"
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.fail(
                f"{name} is not installed; run scripts/setup.sh"
            )
        return found
    return str(path)


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    # No Bridgecrew/Prisma platform: no API key, no mapping download, no telemetry.
    for k in ("BC_API_KEY", "PRISMA_API_URL", "CKV_API_KEY"):
        env.pop(k, None)
    env.update(
        BC_SKIP_MAPPING="TRUE",
        CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false",
        LOG_LEVEL="WARNING",
    )
    return env


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[Path]:
    """One multi-document YAML per kustomization (or the raw files without kubectl)."""
    out = tmp_path_factory.mktemp("k8s-rendered")
    kubectl = shutil.which("kubectl")
    files = []
    if kubectl:
        for k in KUSTOMIZATIONS:
            r = subprocess.run(
                [kubectl, "kustomize", str(K8S / k)],
                capture_output=True, text=True, timeout=60,
            )
            assert r.returncode == 0, f"kustomize {k}: {r.stderr}"
            f = out / (k.replace("/", "-") + ".yaml")
            f.write_text(r.stdout)
            files.append(f)
    else:
        for f in sorted(K8S.rglob("*.yaml")):
            if f.parent.name == "kserve":
                continue  # KServe's CRDs: tests/python/test_kserve.py
            docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
            if docs and all(isinstance(d, dict) and "kind" in d for d in docs):
                if docs[0]["kind"] != "Kustomization":
                    files.append(f)
    return files


def objects(files: list[Path]) -> list[tuple[str, dict]]:
    return [
        (f.name, d)
        for f in files
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]


def find(objs, kind, name=None, source=None):
    hits = [
        d for s, d in objs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (source is None or s.startswith(source))
    ]
    assert hits, f"no {kind} {name or ''} in {source or 'the manifests'}"
    return hits[0]


def pod_specs(objs):
    for _, d in objs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "Job"):
            yield d, spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d, spec["jobTemplate"]["spec"]["template"]["spec"]


def test_yamllint():
    r = subprocess.run(
        [tool("yamllint"), "-s", "-c", str(K8S / ".yamllint"), str(K8S)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_kubernetes_validate_strict(rendered):
    r = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, *map(str, rendered)],
        capture_output=True, text=True, timeout=60,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    passed = re.findall(r"passed for resource", out)
    assert len(passed) >= 20, out
    # The only resources without a schema are the Prometheus Operator CRDs.
    for line in out.splitlines():
        if line.startswith(("WARN", "ERROR")):
            assert "ServiceMonitor" in line, line


def test_service_monitor_matches_the_service(rendered):
    """The CRD kubernetes-validate cannot check: its fields, checked here."""
    objs = objects(rendered)
    sm = find(objs, "ServiceMonitor", "ldct-serve")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    svc = find(objs, "Service", "ldct-serve")
    labels = svc["metadata"]["labels"]
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert labels.get(k) == v, (k, v, labels)
    ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert ep["port"] in ports and ep["path"] == "/metrics"


def test_checkov_zero_failed(rendered):
    dirs = sorted({str(f.parent) for f in rendered})
    cmd = [tool("checkov"), "--config-file", str(K8S / ".checkov.yaml"), "-o", "json"]
    for d in dirs + [str(DOCKER)]:
        cmd += ["-d", d]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=offline_env(), cwd=ROOT,
    )
    # One JSON document per framework run (a dict or a list of dicts).
    reports, dec, text, i = [], json.JSONDecoder(), r.stdout, 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        doc, i = dec.raw_decode(text, i)
        reports += doc if isinstance(doc, list) else [doc]
    by_type = {rep["check_type"]: rep for rep in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, by_type.keys()
    failed = [
        (c["check_id"], c.get("resource"), c.get("file_path"))
        for rep in reports
        for c in rep["results"]["failed_checks"]
    ]
    assert not failed, failed
    for rep in reports:
        assert rep["summary"]["passed"] > 50, rep["summary"]
    assert r.returncode == 0, r.stderr[-2000:]


def test_checkov_skips_nothing():
    cfg = yaml.safe_load((K8S / ".checkov.yaml").read_text())
    assert not cfg.get("skip-check") and not cfg.get("skip_check"), cfg


def test_server_config_uses_documented_flags(rendered):
    """Every LDCT_* variable given to ldct-serve is one serve/README.md documents."""
    documented = set(re.findall(r"`(LDCT_[A-Z_]+)`", (ROOT / "serve/README.md").read_text()))
    objs = objects(rendered)
    cm = find(objs, "ConfigMap", "ldct-serve-config", "overlays-cpu")
    keys = {k for k in cm["data"] if k.startswith("LDCT_")}
    assert keys and keys <= documented, keys - documented
    assert cm["data"]["LDCT_BIND"].startswith("0.0.0.0:")
    assert cm["data"]["LDCT_DEVICE"] == "cpu"
    gpu = find(objs, "ConfigMap", "ldct-serve-config", "overlays-gpu")
    assert gpu["data"]["LDCT_DEVICE"] == "cuda"
    dep = find(objs, "Deployment", "ldct-serve", "overlays-cpu")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    # Secrets as files: the token file is the mounted ldct-api-token secret; no secret
    # reaches the container as an environment value.
    assert not [e for e in env if "valueFrom" in e], env
    token = next(e for e in env if e["name"] == "LDCT_API_TOKEN_FILE")
    pod = dep["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = token["value"].rsplit("/", 1)[0]
    assert volumes[mounts[mount]]["secret"]["secretName"] == "ldct-api-token"
    assert "LDCT_API_TOKEN_FILE" in documented
    # Secret values are never committed.
    assert not [d for _, d in objs if d["kind"] == "Secret"]


def test_deployment_hardening_and_probes(rendered):
    objs = objects(rendered)
    for src in ("overlays-cpu", "overlays-gpu"):
        dep = find(objs, "Deployment", "ldct-serve", src)
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "ldct-models"
        assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    gpu = find(objs, "Deployment", "ldct-serve", "overlays-gpu")["spec"]["template"]["spec"]
    res = gpu["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "gpu" in gpu["containers"][0]["image"]
    sa = find(objs, "ServiceAccount", "ldct-serve")
    assert sa["automountServiceAccountToken"] is False
    hpa = find(objs, "HorizontalPodAutoscaler", "ldct-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "PersistentVolumeClaim", "Namespace"):
        find(objs, kind)

    for d, pod in pod_specs(objs):
        where = f"{d['kind']}/{d['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert DIGEST.search(c["image"]), (where, c["image"])


def test_jobs(rendered):
    objs = objects(rendered)
    batch = find(objs, "Job", "ldct-batch-denoise", "batch")
    assert batch["spec"]["completionMode"] == "Indexed"
    assert batch["spec"]["completions"] == batch["spec"]["parallelism"]
    env = {e["name"]: e.get("value") for e in batch["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(env["SHARDS"]) == batch["spec"]["completions"]
    studies = find(objs, "ConfigMap", "ldct-batch-studies", "batch")["data"]
    assert "JOB_COMPLETION_INDEX" in studies["shard.sh"]
    assert "/v1/denoise" in studies["shard.sh"]

    retrain = find(objs, "ConfigMap", "ldct-retrain", "retrain")["data"]["retrain.sh"]
    steps = [
        "ldct-train dataset import", "ldct-train fit --config", "ldct-train eval",
        "ldct-export --run", "ldct-export gate --candidate", "/v1/models/reload",
    ]
    at = [retrain.index(s) for s in steps]
    assert at == sorted(at), "pipeline steps out of order"
    find(objs, "Job", "ldct-retrain", "retrain")
    cron = find(objs, "CronJob", "ldct-retrain", "retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"

    # The shell scripts parse.
    sh = shutil.which("sh")
    for name, script in (("shard.sh", studies["shard.sh"]), ("retrain.sh", retrain)):
        r = subprocess.run([sh, "-n"], input=script, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (name, r.stderr)


def test_retrain_config_is_a_valid_training_config(rendered, tmp_path):
    """The ConfigMap's train.toml is accepted by the trainer (every field checked)."""
    from conftest import run_bin

    objs = objects(rendered)
    cm = find(objs, "ConfigMap", "ldct-retrain", "retrain")["data"]
    path = tmp_path / "train.toml"
    path.write_text(cm["train.toml"])
    resolved = run_bin("ldct-train", "fit", "--config", path, "--check").stdout
    assert 'root = "/work/data"' in resolved
    assert 'method = "supervised"' in resolved
    # A typo in a field name is refused, so the check above can fail.
    path.write_text(cm["train.toml"].replace("patch =", "pach ="))
    bad = run_bin("ldct-train", "fit", "--config", path, "--check", check=False)
    assert bad.returncode != 0 and "pach" in bad.stderr


def test_shard_script_splits_the_list(tmp_path):
    """Run shard.sh for every index with a fake curl: each file exactly once."""
    docs = yaml.safe_load((K8S / "batch/studies.yaml").read_text())
    script = docs["data"]["shard.sh"]
    files = [f"s{i}/IM{i:04d}.dcm" for i in range(11)]
    (tmp_path / "studies.txt").write_text("\n".join(files) + "\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "posted.txt"
    (fake / "curl").write_text(
        "#!/bin/sh\nout=''\nwhile [ $# -gt 0 ]; do case \"$1\" in -o) out=\"$2\"; shift;; "
        f"--data-binary) echo \"$2\" >> {log};; esac; shift; done\necho dicom > \"$out\"\n"
    )
    (fake / "curl").chmod(0o755)
    secret = tmp_path / "token"
    secret.write_text("t")
    script = (
        script.replace("/config/studies.txt", str(tmp_path / "studies.txt"))
        .replace("/archive/", str(tmp_path / "archive") + "/")
        .replace("/secrets/api-token/token", str(secret))
    )
    shards = 3
    for k in range(shards):
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", JOB_COMPLETION_INDEX=str(k),
                   SHARDS=str(shards), LDCT_SERVE_URL="http://x", LDCT_MODEL="default")
        r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    posted = sorted(log.read_text().split())
    assert posted == sorted(f"@{tmp_path}/archive/input/{f}" for f in files)
    assert all((tmp_path / "archive/output" / f).exists() for f in files)


def test_dockerfiles():
    for name in ("serve-cpu", "serve-gpu", "train-cpu", "train-cuda"):
        text = (DOCKER / f"{name}.Dockerfile").read_text()
        froms = re.findall(r"^FROM (\S+)", text, re.M)
        assert len(froms) >= 2, name  # multi-stage
        for image in froms:
            assert ":" in image and not image.endswith(":latest"), (name, image)
        final = text[text.rindex("\nFROM "):]
        assert re.search(r"^USER 10001", final, re.M), name
        assert "cargo" not in final and "build-essential" not in final, name
        assert "ORT_DYLIB_PATH" in final, name
    gpu = (DOCKER / "serve-gpu.Dockerfile").read_text()
    assert "onnxruntime-gpu" in gpu and "libonnxruntime_providers_cuda.so" in gpu
    assert "--features ldct-train/cuda" in (DOCKER / "train-cuda.Dockerfile").read_text()
