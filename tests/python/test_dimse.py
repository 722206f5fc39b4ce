"""ldct-serve as a DIMSE node between real DICOM peers: dcmtk's storescu and echoscu send
to ldct's C-STORE SCP (`--dimse-bind`), ldct's C-STORE SCU (`--pacs-dimse`) delivers the
derived series to dcmtk's storescp, and in the last test to Orthanc's DICOM port.

Checked independently of ldct's code: what storescp wrote, read by pydicom; pixels
against Python onnxruntime on pydicom's HU (within 1 HU); the derived instances by
dicom3tools' dciodvfy (an IOD validator: no "Error" line); the Device UID against the
rule recomputed here from the model file's SHA-256; the audit log's lines.

Isolation: storescp and Orthanc listen on every interface, so the tests run in a private
network namespace with only a loopback interface where the kernel allows it
(test_dicomweb_orthanc.PrivateNetwork); the Orthanc test is skipped otherwise.
"""

import copy
import hashlib
import io
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import real_ct_files
from test_dicomweb_orthanc import Orthanc, PrivateNetwork, dataset, hu, real_files
from test_dicomweb_orthanc import wait_for as orthanc_wait_for
from test_serve_support import Server, free_port, metric_sum, reference_hu, session, write_tiny_model

STORESCU, STORESCP, ECHOSCU, DCIODVFY = (shutil.which(t) for t in ("storescu", "storescp", "echoscu", "dciodvfy"))
ORTHANC = shutil.which("Orthanc") or (Path("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)

pytestmark = pytest.mark.skipif(
    None in (STORESCU, STORESCP, ECHOSCU, DCIODVFY),
    reason="dcmtk (storescu, storescp, echoscu) or dicom3tools (dciodvfy) is absent: make setup",
)

PATIENT_NAME, PATIENT_ID = "Testpatient^Dimse", "PID-DIMSE-4711"


@pytest.fixture(scope="module")
def net():
    with PrivateNetwork() as n:
        print(f"dcmtk, Orthanc and ldct-serve run in: {n.mode}")
        yield n


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dimse-models")
    onnx = write_tiny_model(folder / "tiny")
    return folder, onnx


def series(tag: str, n=3):
    """n slices of a new CT series made from the real 693_UNCR slice (shifted pixels, own
    UIDs), with a patient name and ID that must never reach the audit log. The slice's
    own IOD defects (dciodvfy: no Frame of Reference UID, no De-identification Method
    though de-identified, no Laterality) are mended so that any error dciodvfy finds in
    a derived instance is ldct's."""
    src = dataset(real_files()["693_UNCR.dcm"])
    src.FrameOfReferenceUID = generate_uid(entropy_srcs=["ldct-dimse-for", tag])
    src.DeidentificationMethod = "ldct test fixture"
    src.Laterality = None
    uid = generate_uid(entropy_srcs=["ldct-dimse-series", tag])
    out = []
    for i in range(n):
        ds = copy.deepcopy(src)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = 7
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ldct-dimse-slice", uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.PixelData = np.roll(src.pixel_array, 11 * i, axis=0).astype(src.pixel_array.dtype).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def write_files(folder: Path, blobs):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, b in enumerate(blobs):
        p = folder / f"{i:03d}.dcm"
        p.write_bytes(b)
        paths.append(p)
    return paths


class StoreScp:
    """dcmtk's storescp as the receiving PACS: AE title STORE, unique file names (so a
    duplicate delivery would show as a second file)."""

    def __init__(self, root: Path):
        self.root, self.port, self.out = root, free_port(), root / "received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc, self.starts = None, 0

    def start(self):
        self.starts += 1
        self.log = open(self.root / f"storescp-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [STORESCP, "-aet", "STORE", "-od", str(self.out), "+uf", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for("storescp to answer C-ECHO", lambda: echo("ANY", "STORE", self.port).returncode == 0)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def received(self):
        return [dataset(p.read_bytes()) for p in sorted(self.out.iterdir()) if p.is_file()]


def wait_for(what, predicate, timeout=90):
    """test_dicomweb_orthanc's wait, with room for a loaded 2-core machine."""
    return orthanc_wait_for(what, predicate, timeout=timeout)


def echo(calling, called, port):
    return subprocess.run([ECHOSCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def store(calling, port, files, called="LDCT", *flags):
    return subprocess.run([STORESCU, *flags, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


def ldct(models, root: Path, push: str, *extra, callers="SCANNER", dport=None):
    """ldct-serve with the SCP on a free port (`callers` allowed) and the SCU to `push`."""
    dport = dport or free_port()
    srv = Server(models, "--pacs-dimse", push, "--dimse-bind", f"127.0.0.1:{dport}",
                 "--dimse-allowed-callers", callers, "--audit-log", root / "audit.jsonl",
                 "--spool-dir", root / "spool", "--pacs-retry-min", "0.2", "--pacs-retry-max", "1",
                 "--dimse-timeout", "30", *extra)
    srv.dimse_port = dport
    return srv


def device_uid(sha256_hex: str) -> str:
    """The Device UID rule of serve/README.md, recomputed: "2.25." + the first 128 bits of
    SHA-256("ldct\\0device\\0" + model sha256) as a version-8 UUID."""
    v = int(hashlib.sha256(f"ldct\0device\0{sha256_hex}".encode()).hexdigest()[:32], 16)
    v = (v & ~(0xF << 76)) | (0x8 << 76)
    v = (v & ~(0x3 << 62)) | (0x2 << 62)
    return f"2.25.{v}"


def dciodvfy_errors(path: Path):
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")]


def test_storescu_to_ldct_to_storescp_denoised_once_valid_and_audited(net, model, tmp_path):
    models, onnx = model
    sha = json.loads((models / "tiny" / "manifest.json").read_text())["onnx"]["sha256"]
    sources = series("roundtrip")
    files = write_files(tmp_path / "send", sources)
    scp = StoreScp(tmp_path / "scp").start()
    try:
        with ldct(models, tmp_path, f"127.0.0.1:{scp.port}:STORE") as srv:
            sent = store("SCANNER", srv.dimse_port, files)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            wait_for("3 derived instances at storescp", lambda: len(scp.received()) >= 3)
            first = scp.received()
            # The same series again: the same derived UIDs (a PACS keeps one copy).
            again = store("SCANNER", srv.dimse_port, files)
            assert again.returncode == 0, again.stdout + again.stderr
            wait_for("the second delivery", lambda: len(scp.received()) >= 6)
            metrics = srv.request("GET", "/metrics").body.decode()
            assert metric_sum(metrics, "ldct_dimse_instances_total", result="accepted") == 6
    finally:
        scp.stop()

    src = {dataset(b).SOPInstanceUID: dataset(b) for b in sources}
    assert len(first) == 3
    assert {d.SOPInstanceUID for d in first} == {d.SOPInstanceUID for d in scp.received()}
    sess = session(onnx)
    for d in first:
        ref_uid = d.SourceImageSequence[0].ReferencedSOPInstanceUID
        s = src[ref_uid]
        assert d.SOPInstanceUID != s.SOPInstanceUID and d.SeriesInstanceUID != s.SeriesInstanceUID
        assert d.StudyInstanceUID == s.StudyInstanceUID
        assert int(d.SeriesNumber) != int(s.SeriesNumber)
        assert int(d.SeriesNumber) == int(s.SeriesNumber) + 1000
        want = reference_hu(sess, hu(s))
        assert np.abs(hu(d) - want).max() <= 1.0
        eq = d.ContributingEquipmentSequence[-1]
        assert eq.Manufacturer == "ldct" and eq.DeviceUID == device_uid(sha)
        assert device_uid(sha) != device_uid(hashlib.sha256(b"another model file").hexdigest())
        assert d.DerivationCodeSequence[-1].CodeValue == "113087"
        assert d.InstanceCreationDate and d.InstanceCreationTime
        assert "not for primary diagnosis" in d.ImageComments
    assert dciodvfy_errors(files[0]) == [], "the source itself should be valid"
    for p in sorted(scp.out.iterdir())[:3]:
        assert dciodvfy_errors(p) == [], p

    text = (tmp_path / "audit.jsonl").read_text()
    lines = [json.loads(l) for l in text.splitlines()]
    assert len(lines) == 6
    for rec in lines:
        assert rec["route"] == "dimse" and rec["caller"].startswith("SCANNER@127.0.0.1:")
        assert rec["outcome"] == "accepted" and rec["model"]["sha256"] == sha
        assert rec["source_sop_instance_uid"] in src
    assert {r["derived_sop_instance_uid"] for r in lines} == {d.SOPInstanceUID for d in first}
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text


def test_callers_not_on_the_list_and_enhanced_ct_are_refused_clearly(net, model, tmp_path):
    models, _ = model
    with ldct(models, tmp_path, "127.0.0.1:9:NOBODY") as srv:
        ok = echo("SCANNER", "LDCT", srv.dimse_port)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        intruder = echo("INTRUDER", "LDCT", srv.dimse_port)
        assert intruder.returncode != 0
        assert "Calling AE Title Not Recognized" in intruder.stdout + intruder.stderr
        wrong = echo("SCANNER", "NOTLDCT", srv.dimse_port)
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        stored = store("INTRUDER", srv.dimse_port, write_files(tmp_path / "x", series("intruder", 1)))
        assert stored.returncode != 0
        enhanced = enhanced_ct()
        r = store("SCANNER", srv.dimse_port, [enhanced], "LDCT", "-v")
        out = r.stdout + r.stderr
        assert "Refused: SOPClassNotSupported" in out, out
        metrics = srv.request("GET", "/metrics").body.decode()
        assert metric_sum(metrics, "ldct_dimse_associations_total", result="refused_caller") >= 2
    assert not (tmp_path / "audit.jsonl").exists() or "INTRUDER" not in (tmp_path / "audit.jsonl").read_text()
    # Off loopback an open SCP is refused at start, and so is an SCP with no PACS to push to.
    from conftest import ldct_bin

    for args, why in (
        (["--dimse-bind", "0.0.0.0:0", "--pacs-dimse", "127.0.0.1:9:X"], "--dimse-allowed-callers"),
        (["--dimse-bind", "127.0.0.1:0"], "--pacs-url or --pacs-dimse"),
    ):
        r = subprocess.run([str(ldct_bin("ldct-serve")), "--models", str(models), "--bind", "127.0.0.1:0",
                            "--spool-dir", str(tmp_path / "spool-x"), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and why in r.stderr, r.stderr[-2000:]


def enhanced_ct():
    """pydicom-data's Enhanced CT (2 frames)."""
    from conftest import _site_packages

    p = _site_packages() / "data_store" / "data" / "eCT_Supplemental.dcm"
    assert p.exists(), f"{p} is missing: is pydicom-data installed (make setup)?"
    return p


def test_a_stopped_storescp_gets_every_instance_once_after_it_restarts(net, model, tmp_path):
    """storescp stops between two series; ldct accepts the second into its spool (C-STORE
    success), refuses new associations while the spool is above its watermark, and
    delivers everything once storescp is back."""
    models, _ = model
    a, b = series("before-outage"), series("during-outage")
    scp = StoreScp(tmp_path / "scp").start()
    # Three derived 512x512 slices are ~1.6 MB: above 30 % of 4 MB.
    with ldct(models, tmp_path, f"127.0.0.1:{scp.port}:STORE", "--spool-max-bytes", "4000000",
              "--dimse-spool-watermark", "0.3") as srv:
        try:
            assert store("SCANNER", srv.dimse_port, write_files(tmp_path / "a", a)).returncode == 0
            wait_for("series A at storescp", lambda: len(scp.received()) >= 3)
            scp.stop()
            sent = store("SCANNER", srv.dimse_port, write_files(tmp_path / "b", b))
            assert sent.returncode == 0, sent.stdout + sent.stderr
            queued = list((tmp_path / "spool" / "queue").glob("*.dcm"))
            assert len(queued) == 3
            busy = echo("SCANNER", "LDCT", srv.dimse_port)
            assert busy.returncode != 0 and "Transient" in busy.stdout + busy.stderr, busy.stdout + busy.stderr
            time.sleep(2)  # a few failed push attempts
            scp.start()
            wait_for("series B after the restart", lambda: len(scp.received()) >= 6)
            wait_for("the spool to drain", lambda: not list((tmp_path / "spool" / "queue").glob("*.dcm")))
            assert echo("SCANNER", "LDCT", srv.dimse_port).returncode == 0
        finally:
            scp.stop()
    got = scp.received()
    uids = [d.SOPInstanceUID for d in got]
    assert len(got) == 6 and len(set(uids)) == 6, "an instance arrived twice or not at all"
    sources = {dataset(x).SOPInstanceUID for x in a + b}
    assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in got} == sources


def test_orthanc_both_ways_over_dimse_without_duplicates(net, model, tmp_path):
    if ORTHANC is None:
        pytest.skip("Orthanc is absent: make setup")
    if "private" not in net.mode:
        pytest.skip("Orthanc's DICOM port listens on every interface: run only in a private network namespace")
    models, onnx = model
    dicom_port, ldct_port = free_port(), free_port()
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "DicomServerEnabled": True, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": True,
        "DicomModalities": {"ldct": ["LDCT", "127.0.0.1", ldct_port]},
    })
    sources = series("orthanc")
    files = write_files(tmp_path / "send", sources)
    with orthanc, ldct(models, tmp_path, f"127.0.0.1:{dicom_port}:ORTHANC",
                       callers="SCANNER,ORTHANC", dport=ldct_port) as srv:
        for _ in range(2):
            sent = store("SCANNER", srv.dimse_port, files)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            wait_for("the spool to drain", lambda: not list((tmp_path / "spool" / "queue").glob("*.dcm")))
        ids = orthanc.get("/instances")
        assert len(ids) == 3, "a second send must not create duplicates"
        sess = session(onnx)
        by_sop = {dataset(b).SOPInstanceUID: dataset(b) for b in sources}
        for i in ids:
            d = dataset(orthanc_file(orthanc, i))
            s = by_sop[d.SourceImageSequence[0].ReferencedSOPInstanceUID]
            assert np.abs(hu(d) - reference_hu(sess, hu(s))).max() <= 1.0
        # Orthanc as the sender too: a series uploaded to it and C-STOREd to ldct
        # (its /modalities/ldct/store route, as the README's Lua trigger does) comes back
        # denoised into the same study.
        other = series("orthanc-sends", 2)
        for b in other:
            orthanc.post("/instances", b)
        series_id = orthanc.lookup(dataset(other[0]).SeriesInstanceUID, "Series")
        orthanc.post("/modalities/ldct/store", series_id.encode(), "text/plain")
        wait_for("Orthanc's series to come back denoised", lambda: len(orthanc.get("/instances")) >= 7)
        wait_for("the spool to drain", lambda: not list((tmp_path / "spool" / "queue").glob("*.dcm")))
        assert len(orthanc.get("/instances")) == 7
    audit = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {r["caller"].split("@")[0] for r in audit} == {"SCANNER", "ORTHANC"}


def orthanc_file(orthanc, instance_id):
    from test_dicomweb_orthanc import request

    status, _, body = request(orthanc.port, "GET", f"/instances/{instance_id}/file")
    assert status == 200
    return body


def test_series_rules_pass_scouts_and_reformats_unchanged_and_refuse_when_configured(net, model, tmp_path):
    models, _ = model
    blobs = series("rules")
    scout, coronal = dataset(blobs[0]), dataset(blobs[1])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    coronal.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    def save(ds):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    blobs = [save(scout), save(coronal), blobs[2]]
    files = write_files(tmp_path / "send", blobs)
    scp = StoreScp(tmp_path / "scp").start()
    try:
        with ldct(models, tmp_path, f"127.0.0.1:{scp.port}:STORE") as srv:
            assert store("SCANNER", srv.dimse_port, files).returncode == 0
            wait_for("3 instances at storescp", lambda: len(scp.received()) >= 3)
            metrics = srv.request("GET", "/metrics").body.decode()
            assert metric_sum(metrics, "ldct_dimse_instances_total", result="passed") == 2
        got = {d.SOPInstanceUID: d for d in scp.received()}
        for src in (scout, coronal):
            # Passed through: the source's own UIDs and pixels, no ldct marks.
            d = got[src.SOPInstanceUID]
            assert d.SeriesInstanceUID == src.SeriesInstanceUID
            assert np.array_equal(d.pixel_array, src.pixel_array)
            assert "ContributingEquipmentSequence" not in d
        derived = [d for d in got.values() if d.SOPInstanceUID not in (scout.SOPInstanceUID, coronal.SOPInstanceUID)]
        assert len(derived) == 1 and derived[0].ContributingEquipmentSequence[-1].Manufacturer == "ldct"
        audit = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert len(audit) == 1, "only the denoised slice is a derived instance"
    finally:
        scp.stop()
    (tmp_path / "spool").rename(tmp_path / "spool-1")
    with ldct(models, tmp_path, "127.0.0.1:9:NOBODY", "--rule-localizer", "refuse") as srv:
        r = store("SCANNER", srv.dimse_port, files[:1], "LDCT", "-v")
        response = [l for l in (r.stdout + r.stderr).splitlines() if "Received Store Response" in l]
        assert response and "Success" not in response[0], r.stdout + r.stderr


def test_dicom_tls_with_the_servers_certificate(net, model, tmp_path):
    """With --tls-cert/--tls-key the SCP speaks DICOM TLS: dcmtk over TLS (trusting the
    certificate) stores and echoes; a plain-TCP association fails."""
    from test_serve_support import self_signed_cert

    models, _ = model
    cert, key = self_signed_cert(tmp_path)
    scp = StoreScp(tmp_path / "scp").start()
    dport = free_port()
    srv = Server(models, "--tls-cert", cert, "--tls-key", key, "--pacs-dimse", f"127.0.0.1:{scp.port}:STORE",
                 "--dimse-bind", f"127.0.0.1:{dport}", "--dimse-allowed-callers", "SCANNER",
                 "--spool-dir", tmp_path / "spool", ca_cert=cert)
    tls = ["+tla", "+cf", str(cert)]
    try:
        with srv:
            ok = subprocess.run([ECHOSCU, *tls, "-aet", "SCANNER", "-aec", "LDCT", "127.0.0.1", str(dport)],
                                capture_output=True, text=True, timeout=60)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert echo("SCANNER", "LDCT", dport).returncode != 0, "plain TCP must not get an association"
            sent = store("SCANNER", dport, write_files(tmp_path / "send", series("tls", 1)), "LDCT", *tls)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            wait_for("the instance at storescp", lambda: len(scp.received()) >= 1)
    finally:
        scp.stop()


def test_a_jpeg2000_instance_is_received_in_its_own_transfer_syntax(net, model, tmp_path):
    """dcmtk proposes JPEG 2000 lossless (-xv) and sends pydicom-data's 693_J2KR as it is;
    the derived instance matches the model run on pydicom's decoding of it."""
    models, onnx = model
    j2k = [p for p in real_ct_files() if p.name == "693_J2KR.dcm"]
    assert j2k, "pydicom-data's 693_J2KR.dcm is missing (make setup)"
    scp = StoreScp(tmp_path / "scp").start()
    try:
        with ldct(models, tmp_path, f"127.0.0.1:{scp.port}:STORE") as srv:
            r = store("SCANNER", srv.dimse_port, j2k, "LDCT", "-v", "-xv")
            out = r.stdout + r.stderr
            assert r.returncode == 0 and "Received Store Response (Success)" in out, out
            assert "-> JPEG 2000 (Lossless only)" in out, "sent in another transfer syntax"
            wait_for("the derived instance", lambda: len(scp.received()) >= 1)
    finally:
        scp.stop()
    src = dataset(j2k[0].read_bytes())
    (d,) = scp.received()
    assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert np.abs(hu(d) - reference_hu(session(onnx), hu(src))).max() <= 1.0
