"""ldct-serve as a DICOMweb peer of a real PACS: Debian's Orthanc with its DICOMweb plugin.

- push: instances STOWed to ldct are denoised and forwarded to Orthanc by STOW-RS;
- pull: ldct finds a study's CT series on Orthanc by QIDO-RS, fetches them by WADO-RS
  and pushes the derived series back (a job, polled to completion);
- outage: Orthanc is down while ldct accepts a STOW (spooled), ldct itself restarts, then
  Orthanc comes back: the spool drains and every derived instance arrives exactly once;
- auto-forward: Orthanc's `DicomWeb.Servers` entry and `OnStableSeries` Lua trigger from
  serve/README.md send stable CT series to ldct on their own.

What arrives is checked through Orthanc (QIDO-RS and its REST API): one derived series
per source series, its attributes, its slice count, and pixel data equal to the model
run independently (Python onnxruntime on pydicom's HU, the manifest's pixel contract)
within the rounding of the stored integers.

Isolation: Orthanc 1.10 has no bind-address option (its HTTP server listens on every
interface). The tests therefore run Orthanc and ldct-serve in a private network
namespace holding only a loopback interface (unshare(CLONE_NEWNET) on pytest's thread,
undone afterwards), so nothing outside this machine's test can reach either. Where the
kernel refuses (no CAP_SYS_ADMIN, e.g. an unprivileged container) they run on the host
with Orthanc's "RemoteAccessAllowed": false — Orthanc then answers every peer that is
not 127.0.0.1/::1 with 403 before any request is handled — and its DICOM server off.
"""

import copy
import ctypes
import fcntl
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import real_ct_files
from test_serve_support import Server, free_port, metric_sum, reference_hu, session, write_tiny_model

ORTHANC = shutil.which("Orthanc") or (Path("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SUFFIX = "[ldct tiny 0.1.0]"
# Stored integers are rounded: HU within half a unit (slope 1) plus float noise.
TOLERANCE_HU = 0.51

pytestmark = pytest.mark.skipif(
    ORTHANC is None,
    reason="the Orthanc binary is absent: install the Debian packages orthanc and orthanc-dicomweb (make setup)",
)


# --- network isolation --------------------------------------------------------------

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


class PrivateNetwork:
    """Moves the calling thread into a new network namespace with only `lo` (up); undone
    on exit. Processes started from this thread inherit it."""

    def __init__(self):
        self.mode = None
        self._orig = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    def __enter__(self):
        self._orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        if self._libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(self._orig)
            self._orig = None
            self.mode = f"host loopback, Orthanc RemoteAccessAllowed=false (unshare: {os.strerror(err)})"
            return self
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
        self.mode = "private network namespace (loopback only)"
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            if self._libc.setns(self._orig, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
            os.close(self._orig)


@pytest.fixture(scope="module")
def network():
    with PrivateNetwork() as net:
        print(f"Orthanc and ldct-serve run in: {net.mode}")
        yield net


# --- HTTP and Orthanc ---------------------------------------------------------------


def request(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_for(what, predicate, timeout=60, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Orthanc:
    """Orthanc on 127.0.0.1:<port>, its own config and storage; restartable on the same
    port and storage."""

    def __init__(self, root: Path, port=None, extra=None):
        assert PLUGIN.exists(), f"{PLUGIN} is missing: install the Debian package orthanc-dicomweb (make setup)"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.storage = root / "storage"
        self.config = root / "orthanc.json"
        config = {
            "Name": "ldct-test",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StableAge": 1,
            "SaveJobs": False,
            "HttpTimeout": 60,
        }
        for k, v in (extra or {}).items():
            if isinstance(v, dict) and isinstance(config.get(k), dict):
                config[k] = {**config[k], **v}
            else:
                config[k] = v
        self.config.write_text(json.dumps(config, indent=2))
        self.proc = None
        self.starts = 0

    @property
    def dicomweb(self):
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self):
        self.starts += 1
        self.log = open(self.root / f"orthanc-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited {self.proc.returncode}:\n{self.text_log()}")
                try:
                    if request(self.port, "GET", "/system", timeout=2)[0] == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"Orthanc did not start:\n{self.text_log()}")
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def text_log(self):
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.root.glob("orthanc-*.log")))

    def get(self, path):
        status, _, body = request(self.port, "GET", path)
        assert status == 200, f"Orthanc GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def post(self, path, body, content_type="application/octet-stream"):
        status, _, out = request(self.port, "POST", path, body=body, headers={"Content-Type": content_type})
        assert status == 200, f"Orthanc POST {path}: {status} {out[:300]!r}"
        return json.loads(out)

    def lookup(self, uid, kind):
        found = [r for r in self.post("/tools/lookup", uid.encode(), "text/plain") if r["Type"] == kind]
        return found[0]["ID"] if found else None

    def qido(self, path):
        status, _, body = request(self.port, "GET", f"/dicom-web{path}", headers={"Accept": "application/dicom+json"})
        assert status in (200, 204), f"QIDO-RS {path}: {status} {body[:300]!r}"
        return json.loads(body) if body.strip() else []

    def new_instance_changes(self):
        out, since = [], 0
        while True:
            page = self.get(f"/changes?since={since}&limit=1000")
            out += [c["ID"] for c in page["Changes"] if c["ChangeType"] == "NewInstance"]
            if page["Done"]:
                return out
            since = page["Last"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def value(item, tag):
    v = item.get(tag, {}).get("Value") or [None]
    return v[0]


# --- data -----------------------------------------------------------------------------


def multipart_related(parts):
    boundary = f"py-{uuid.uuid4().hex}"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def dataset(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


def hu(ds):
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def real_files():
    """conftest's real CT slices by name: CT_small (its own study) and pydicom-data's
    693 series (UNCI, UNCR, and J2KR = UNCR's SOP Instance in JPEG 2000)."""
    files = {p.name: p.read_bytes() for p in real_ct_files()}
    for name in ("CT_small.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "693_J2KR.dcm"):
        assert name in files, f"{name} missing: is pydicom-data installed (make setup)?"
    return files


def five_slice_series(base: bytes, n=5):
    """A second CT series of the 693 study: n slices made from the real 693_UNCR slice
    (shifted pixels, new SOP / Series Instance UIDs, positions 5 mm apart)."""
    src = dataset(base)
    series = generate_uid(entropy_srcs=["ldct-test-series", src.SeriesInstanceUID])
    out = []
    for i in range(n):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 99
        ds.SeriesDescription = "ldct test 5 slices"
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ldct-test-slice", series, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        if "ImagePositionPatient" in ds:
            pos = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
        ds.PixelData = np.roll(src.pixel_array, 9 * i, axis=1).astype(src.pixel_array.dtype).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


# --- checks ---------------------------------------------------------------------------


def check_derived_series(orthanc, sess, sources, derived_series_uid):
    """`sources`: the source files (bytes) whose derived instances form the series
    `derived_series_uid` on Orthanc (one instance per distinct source SOP Instance UID)."""
    src = [dataset(b) for b in sources]
    study = src[0].StudyInstanceUID
    by_sop = {ds.SOPInstanceUID: ds for ds in src}
    # QIDO-RS: the series with its attributes.
    found = orthanc.qido(f"/studies/{study}/series?SeriesInstanceUID={derived_series_uid}"
                         "&includefield=0008103E&includefield=00201209")
    assert len(found) == 1, found
    s = found[0]
    assert value(s, "00080060") == "CT"
    assert value(s, "0008103E").endswith(SUFFIX), value(s, "0008103E")
    if "SeriesDescription" in src[0]:
        assert value(s, "0008103E") == f"{src[0].SeriesDescription} {SUFFIX}"
    assert int(value(s, "00201209")) == len(by_sop)
    instances = orthanc.qido(f"/studies/{study}/series/{derived_series_uid}/instances")
    assert len(instances) == len(by_sop)
    # Every instance: attributes and pixels.
    series_id = orthanc.lookup(derived_series_uid, "Series")
    ids = orthanc.get(f"/series/{series_id}")["Instances"]
    assert len(ids) == len(by_sop)
    seen = set()
    for iid in ids:
        status, _, data = request(orthanc.port, "GET", f"/instances/{iid}/file")
        assert status == 200
        out = dataset(data)
        ref = out.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref in by_sop and ref not in seen
        seen.add(ref)
        s = by_sop[ref]
        assert out.Modality == "CT"
        assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert out.StudyInstanceUID == s.StudyInstanceUID
        assert out.SeriesInstanceUID == derived_series_uid
        assert out.SOPInstanceUID != s.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")
        assert out.SeriesDescription.endswith(SUFFIX)
        assert "tiny" in out.DerivationDescription
        for kw in ("PatientID", "FrameOfReferenceUID", "ImagePositionPatient", "PixelSpacing", "RescaleSlope",
                   "RescaleIntercept", "Rows", "Columns"):
            if kw in s:
                assert out.get(kw) == s.get(kw), kw
        got = hu(out)
        want = reference_hu(sess, hu(s))
        err = np.abs(got - want).max()
        assert err <= TOLERANCE_HU * float(out.get("RescaleSlope", 1)), f"max |Orthanc - onnxruntime| = {err} HU"
        # The model did change the pixels (a wrong copy of the source would fail here).
        assert np.abs(hu(s) - got).max() > 1.0
    return ids


def metrics_text(server):
    r = server.request("GET", "/metrics")
    assert r.status == 200
    return r.body.decode()


def wait_drained(server, timeout=60):
    wait_for("the spool to drain", lambda: metric_sum(metrics_text(server), "ldct_spool_depth") == 0
             and metric_sum(metrics_text(server), "ldct_pacs_push_total", result="ok") > 0, timeout)


def stow(server, parts, path="/dicomweb/studies?model=tiny"):
    body, ctype = multipart_related(parts)
    r = server.request("POST", path, body=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
    return r.status, (json.loads(r.body) if r.body else {})


def ldct(tmp, orthanc_url, spool, *extra):
    models = tmp / "models"
    if not (models / "tiny").exists():
        write_tiny_model(models / "tiny")
    return Server(models, "--pacs-url", orthanc_url, "--spool-dir", spool, "--pacs-retry-min", "0.2",
                  "--pacs-retry-max", "1", "--max-batch", "8", "--batch-timeout-ms", "20", *extra,
                  log=tmp / f"ldct-{uuid.uuid4().hex[:6]}.log")


@pytest.fixture
def sess(tmp_path):
    path = write_tiny_model(tmp_path / "ref-model" / "tiny")
    return session(path)


# --- tests ----------------------------------------------------------------------------


def test_push_stow_to_ldct_arrives_in_orthanc(network, tmp_path, sess):
    files = real_files()
    with Orthanc(tmp_path / "orthanc") as orthanc, ldct(tmp_path, orthanc.dicomweb, tmp_path / "spool") as server:
        parts = [files["CT_small.dcm"], files["693_UNCI.dcm"], files["693_UNCR.dcm"]]
        status, report = stow(server, parts)
        assert status == 200, report
        stored = report["00081199"]["Value"]
        assert len(stored) == 3 and "00081198" not in report
        derived_series = {value(i, "00081155"): value(i, "00091003") for i in stored}
        for item in stored:
            assert value(item, "00081190").startswith(orthanc.dicomweb + "/studies/")
        wait_drained(server)
        text = metrics_text(server)
        assert metric_sum(text, "ldct_pacs_push_total", result="ok") == 3
        assert metric_sum(text, "ldct_stow_instances_total", result="accepted") == 3

        small = dataset(files["CT_small.dcm"])
        check_derived_series(orthanc, sess, [files["CT_small.dcm"]], derived_series[small.SOPInstanceUID])
        unci = dataset(files["693_UNCI.dcm"])
        series_693 = derived_series[unci.SOPInstanceUID]
        assert derived_series[dataset(files["693_UNCR.dcm"]).SOPInstanceUID] == series_693, "one derived series"
        check_derived_series(orthanc, sess, [files["693_UNCI.dcm"], files["693_UNCR.dcm"]], series_693)

        # The same slice again, JPEG 2000 this time (693_J2KR is 693_UNCR's SOP Instance):
        # the same derived instance, so no duplicate on the PACS.
        status, report = stow(server, [files["693_J2KR.dcm"]], f"/dicomweb/studies/{unci.StudyInstanceUID}")
        assert status == 200, report
        assert value(report["00081199"]["Value"][0], "00091003") == series_693
        wait_for("the second push", lambda: metric_sum(metrics_text(server), "ldct_pacs_push_total", result="ok") == 4)
        check_derived_series(orthanc, sess, [files["693_UNCI.dcm"], files["693_UNCR.dcm"]], series_693)

        # promtool accepts the DICOMweb metrics too.
        promtool = shutil.which("promtool")
        if promtool:
            proc = subprocess.run([promtool, "check", "metrics"], input=metrics_text(server), capture_output=True,
                                  text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pull_job_fetches_from_orthanc_and_pushes_the_derived_series_back(network, tmp_path, sess):
    files = real_files()
    five = five_slice_series(files["693_UNCR.dcm"])
    with Orthanc(tmp_path / "orthanc") as orthanc, ldct(tmp_path, orthanc.dicomweb, tmp_path / "spool") as server:
        for data in [files["CT_small.dcm"], files["693_UNCI.dcm"], files["693_UNCR.dcm"], *five]:
            orthanc.post("/instances", data)
        study = dataset(files["693_UNCI.dcm"]).StudyInstanceUID

        r = server.request("POST", f"/v1/studies/{study}/denoise?model=tiny")
        assert r.status == 202, r.body
        job = r.json()
        assert job["state"] in ("queued", "running") and r.header("location") == f"/v1/jobs/{job['id']}"

        def finished():
            j = server.request("GET", f"/v1/jobs/{job['id']}").json()
            return j if j["state"] in ("succeeded", "failed") else None

        done = wait_for("the pull job", finished, timeout=90)
        assert done["state"] == "succeeded", done
        assert done["progress"] == {"done": 7, "total": 7}
        res = done["result"]
        assert (res["denoised"], res["failed"], res["pushed"], res["push_failed"]) == (7, 0, 7, 0), res
        by_source = {s["source_series_instance_uid"]: s for s in res["series"]}
        assert len(by_source) == 2
        orig, synth = dataset(files["693_UNCI.dcm"]).SeriesInstanceUID, dataset(five[0]).SeriesInstanceUID
        assert by_source[orig]["instances"] == 2 and by_source[synth]["instances"] == 5
        check_derived_series(orthanc, sess, [files["693_UNCI.dcm"], files["693_UNCR.dcm"]],
                             by_source[orig]["derived_series_instance_uid"])
        check_derived_series(orthanc, sess, five, by_source[synth]["derived_series_instance_uid"])

        # The five slices were queued together: at least one inference batch of several.
        text = metrics_text(server)
        assert metric_sum(text, "ldct_batch_size_bucket", model="tiny", le="1.0") < metric_sum(
            text, "ldct_batch_size_count", model="tiny"), "no batch of more than one slice"

        # One series by UID; a study without CT on the PACS fails with a clear reason.
        small = dataset(files["CT_small.dcm"])
        r = server.request("POST", f"/v1/studies/{small.StudyInstanceUID}/denoise?series={small.SeriesInstanceUID}")
        assert r.status == 202
        done = wait_for("the second job", lambda: (lambda j: j if j["state"] in ("succeeded", "failed") else None)(
            server.request("GET", r.header("location")).json()), timeout=60)
        assert done["state"] == "succeeded" and done["progress"] == {"done": 1, "total": 1}, done
        check_derived_series(orthanc, sess, [files["CT_small.dcm"]],
                             done["result"]["series"][0]["derived_series_instance_uid"])
        r = server.request("POST", "/v1/studies/1.2.3.4.5.6.7/denoise")
        failed = wait_for("the third job", lambda: (lambda j: j if j["state"] == "failed" else None)(
            server.request("GET", r.header("location")).json()), timeout=60)
        assert "no CT series" in failed["error"], failed


def test_orthanc_down_the_spool_keeps_and_drains_each_instance_once(network, tmp_path, sess):
    files = real_files()
    five = five_slice_series(files["693_UNCR.dcm"])
    parts = [files["693_UNCI.dcm"], files["693_UNCR.dcm"], *five]
    orthanc = Orthanc(tmp_path / "orthanc").start()
    spool = tmp_path / "spool"
    try:
        orthanc.stop()
        with ldct(tmp_path, orthanc.dicomweb, spool) as server:
            status, report = stow(server, parts)
            # Accepted: it is in the spool, although the PACS is down.
            assert status == 200, report
            assert len(report["00081199"]["Value"]) == 7
            derived = {value(i, "00091002") for i in report["00081199"]["Value"]}
            series = {value(i, "00091003") for i in report["00081199"]["Value"]}
            assert len(derived) == 7 and len(series) == 2
            assert len(list((spool / "queue").glob("*.dcm"))) == 7
            wait_for("a failed push attempt", lambda: metric_sum(metrics_text(server), "ldct_pacs_push_total",
                                                                 result="failed") >= 7)
            text = metrics_text(server)
            assert metric_sum(text, "ldct_spool_depth") == 7
            assert metric_sum(text, "ldct_pacs_push_total", result="ok") == 0
        # ldct restarts with the PACS still down: it resumes the spool.
        with ldct(tmp_path, orthanc.dicomweb, spool) as server:
            assert metric_sum(metrics_text(server), "ldct_spool_depth") == 7
            orthanc.start()  # same port, same storage
            wait_drained(server)
            wait_for("all 7 pushed", lambda: metric_sum(metrics_text(server), "ldct_pacs_push_total", result="ok") >= 7)
            time.sleep(1.0)  # nothing more may be pushed
            text = metrics_text(server)
            # Each derived instance pushed once after success: never again.
            assert metric_sum(text, "ldct_pacs_push_total", result="ok") == 7
            assert metric_sum(text, "ldct_pacs_push_total", result="rejected") == 0
        assert not list((spool / "queue").glob("*.dcm"))
        # On Orthanc: each derived instance exactly once, one NewInstance event each.
        ids = []
        for uid in series:
            sources = [files["693_UNCI.dcm"], files["693_UNCR.dcm"]] if len(
                orthanc.qido(f"/studies/{dataset(parts[0]).StudyInstanceUID}/series/{uid}/instances")) == 2 else five
            ids += check_derived_series(orthanc, sess, sources, uid)
        assert len(ids) == 7
        changes = orthanc.new_instance_changes()
        assert sorted(c for c in changes if c in ids) == sorted(ids)
    finally:
        orthanc.stop()


LUA = """
-- serve/README.md: send every stable CT series to ldct (not ldct's own output).
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' and
     not string.find(tags['SeriesDescription'] or '', '[ldct ', 1, true) then
    RestApiPost('/dicom-web/servers/ldct/stow', DumpJson({ Resources = { seriesId } }))
  end
end
"""


def test_orthanc_auto_forward_lua_trigger(network, tmp_path, sess):
    files = real_files()
    token = uuid.uuid4().hex
    lua = tmp_path / "ldct-forward.lua"
    lua.write_text(LUA)
    orthanc_port = free_port()
    server = ldct(tmp_path, f"http://127.0.0.1:{orthanc_port}/dicom-web", tmp_path / "spool", "--api-token", token)
    orthanc = Orthanc(tmp_path / "orthanc", port=orthanc_port, extra={
        "LuaScripts": [str(lua)],
        "DicomWeb": {"Servers": {"ldct": {
            "Url": f"http://127.0.0.1:{server.port}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {token}"},
        }}},
    })
    with server, orthanc:
        orthanc.post("/instances", files["CT_small.dcm"])
        small = dataset(files["CT_small.dcm"])

        def derived_series():
            found = orthanc.qido(f"/studies/{small.StudyInstanceUID}/series?includefield=0008103E")
            return [value(s, "0020000E") for s in found if (value(s, "0008103E") or "").endswith(SUFFIX)]

        (uid,) = wait_for("the auto-forwarded series to come back", derived_series, timeout=60)
        check_derived_series(orthanc, sess, [files["CT_small.dcm"]], uid)
        # The derived series became stable too, and was not sent back to ldct.
        time.sleep(2.5)
        text = metrics_text(server)
        assert metric_sum(text, "ldct_stow_instances_total", result="accepted") == 1
        assert metric_sum(text, "ldct_stow_instances_total", result="failed") == 0
        assert len(derived_series()) == 1
