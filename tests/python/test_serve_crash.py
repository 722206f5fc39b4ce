"""kill -9 of ldct-serve during STOW-RS uploads and during the push to a real Orthanc,
then restarts: every instance answered 200 arrives in Orthanc exactly once and intact,
and nothing arrives half-written.

Each round sends one STOW-RS request (one new CT instance, made from pydicom-data's
693_UNCR slice with its own UIDs and shifted pixels) and kills the server with SIGKILL
at a random point (seeded) between 0 and 400 ms after the request starts: while the
body is read, while the slice is denoised, while the derived file is written to the
spool, or while earlier instances are pushed to Orthanc. The next round starts a new
server on the same spool. At the end a last server drains the spool; Orthanc is then
asked for every derived instance.
"""

import random
import threading
import time

import pytest

from test_dicomweb_orthanc import (  # noqa: F401  (network is a fixture)
    Orthanc,
    check_derived_series,
    dataset,
    five_slice_series,
    ldct,
    metric_sum,
    metrics_text,
    network,
    real_files,
    sess,
    stow,
    value,
    wait_for,
    ORTHANC,
)
from conftest import ROOT  # noqa: F401

ROUNDS = 24

pytestmark = pytest.mark.skipif(ORTHANC is None, reason="the Orthanc binary is absent (make setup)")


def kill_hard(server):
    server.proc.kill()
    server.proc.wait()
    server.log.close()


def test_kill_9_during_uploads_and_pushes_loses_and_duplicates_nothing(network, tmp_path, sess):
    files = real_files()
    instances = five_slice_series(files["693_UNCR.dcm"], n=ROUNDS)
    rng = random.Random(20261203)
    spool = tmp_path / "spool"
    orthanc = Orthanc(tmp_path / "orthanc").start()
    outcomes = []  # (source SOP Instance UID, "accepted" | "failed" | "killed", derived SOP UID)
    try:
        for i, inst in enumerate(instances):
            server = ldct(tmp_path, orthanc.dicomweb, spool).start()
            result = {}

            def send():
                try:
                    result["status"], result["report"] = stow(server, [inst])
                except Exception as e:  # the server was killed mid-request
                    result["error"] = repr(e)

            t = threading.Thread(target=send)
            t.start()
            time.sleep(rng.uniform(0.0, 0.4))
            kill_hard(server)
            t.join(timeout=60)
            src_uid = dataset(inst).SOPInstanceUID
            if result.get("status") == 200:
                item = result["report"]["00081199"]["Value"][0]
                outcomes.append((src_uid, "accepted", value(item, "00091002")))
            elif "status" in result:
                outcomes.append((src_uid, "failed", None))
            else:
                outcomes.append((src_uid, "killed", None))
        # A last server drains what the killed ones spooled.
        with ldct(tmp_path, orthanc.dicomweb, spool) as server:
            wait_for("the spool to drain", lambda: metric_sum(metrics_text(server), "ldct_spool_depth") == 0,
                     timeout=120)
        assert not list((spool / "queue").glob("*.dcm"))
        assert not list((spool / "tmp").glob("*"))
        assert not list((spool / "failed").glob("*.dcm"))

        accepted = [o for o in outcomes if o[1] == "accepted"]
        kinds = {k: sum(1 for o in outcomes if o[1] == k) for k in ("accepted", "failed", "killed")}
        print(f"{ROUNDS} rounds: {kinds}")
        assert kinds["accepted"] >= 3 and kinds["killed"] >= 3, kinds  # both sides of the race were hit
        # Orthanc: the derived series holds each accepted instance exactly once; an
        # instance whose request was cut off may be there (it was spooled before the
        # kill) or not, but never twice and never damaged.
        study = dataset(instances[0]).StudyInstanceUID
        derived = [value(s, "0020000E") for s in orthanc.qido(f"/studies/{study}/series?includefield=0008103E")
                   if "[ldct " in (value(s, "0008103E") or "")]
        assert len(derived) == 1, derived
        on_pacs = orthanc.qido(f"/studies/{study}/series/{derived[0]}/instances")
        on_pacs_uids = [value(i, "00080018") for i in on_pacs]
        assert len(on_pacs_uids) == len(set(on_pacs_uids))
        for _, _, uid in accepted:
            assert on_pacs_uids.count(uid) == 1, f"accepted instance {uid} is on the PACS {on_pacs_uids.count(uid)} times"
        # Every instance there is complete and equals the model's output on its source.
        by_src = {dataset(b).SOPInstanceUID: b for b in instances}
        arrived_sources = []
        for iid in orthanc.get(f"/series/{orthanc.lookup(derived[0], 'Series')}")["Instances"]:
            tags = orthanc.get(f"/instances/{iid}/simplified-tags")
            arrived_sources.append(tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"])
        assert all(s in by_src for s in arrived_sources)
        ids = check_derived_series(orthanc, sess, [by_src[s] for s in arrived_sources], derived[0])
        changes = orthanc.new_instance_changes()
        assert sorted(c for c in changes if c in ids) == sorted(ids), "an instance was stored twice"
        # Nothing answered with a failure reached the PACS.
        failed_src = {o[0] for o in outcomes if o[1] == "failed"}
        assert not failed_src & set(arrived_sources)
    finally:
        orthanc.stop()
