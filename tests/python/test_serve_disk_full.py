"""The spool's disk fills up: STOW-RS answers A700 (out of resources) for what it cannot
store durably, never 200 without the data, and the server keeps serving.

The spool is a 512 KiB tmpfs mounted for the test (the spool's own byte bound is left at
its 4 GiB default, so the file system, not ldct's accounting, runs out first: writes
fail with ENOSPC). Where mounting is not permitted the test is skipped, saying so; the
spool's byte bound (the same A700 path without a full disk) is tested in
serve/tests/dicomweb.rs either way.
"""

import copy
import io
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import real_ct_files
from test_serve_support import Server, write_tiny_model
from test_dicomweb_orthanc import multipart_related


def instances(n):
    src = pydicom.dcmread(next(p for p in real_ct_files() if p.name == "CT_small.dcm"))
    out = []
    for i in range(n):
        ds = copy.deepcopy(src)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ldct-disk-full", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "spool"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): the disk-full case is not exercised")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_spool_disk_is_a700_never_200_without_the_data(tmp_path, small_disk):
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    parts = instances(30)  # ~40 KiB derived each: more than 512 KiB in all
    server = Server(models, "--pacs-url", "http://127.0.0.1:9/dicom-web", "--spool-dir", small_disk,
                    "--pacs-retry-min", "60", log=tmp_path / "ldct.log")
    accepted, out_of_resources = [], 0
    with server:
        for p in parts:
            body, ctype = multipart_related([p])
            r = server.request("POST", "/dicomweb/studies?model=tiny", body=body,
                               headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
            assert r.status in (200, 503), (r.status, r.body[:300])
            report = r.json()
            if r.status == 200:
                accepted.append(report["00081199"]["Value"][0]["00091002"]["Value"][0])
            else:
                failed = report["00081198"]["Value"][0]
                assert failed["00081197"]["Value"][0] == 0xA700, failed
                assert r.header("retry-after"), r.headers
                out_of_resources += 1
        # Still serving.
        assert server.request("GET", "/v2/health/live").status == 200
    print(f"{len(accepted)} accepted, {out_of_resources} refused with A700")
    assert accepted and out_of_resources, (len(accepted), out_of_resources)
    # A failed write leaves nothing behind in tmp/ to hold the space.
    assert not list((small_disk / "tmp").iterdir())
    # Every instance answered 200 is in the spool, whole (pydicom reads it); no
    # half-written file is left in queue/.
    queued = {}
    for f in (small_disk / "queue").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        assert ds.pixel_array.shape == (128, 128)
        queued[ds.SOPInstanceUID] = f
    assert sorted(queued) == sorted(accepted)
