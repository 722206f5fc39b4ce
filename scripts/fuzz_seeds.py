#!/usr/bin/env python3
"""Seed corpora for the fuzz targets in fuzz/ (make fuzz): real files where the project
has them, small valid files of every encoding otherwise.

    scripts/fuzz_seeds.py fuzz/seeds

- dicom: every DICOM file of pydicom's and pydicom-data's test sets (real CT, MR, every
  transfer syntax they hold: test fixtures, used here only as parser inputs);
- npy: float32 / int16 / float64 / big-endian / Fortran-order arrays (numpy);
- nifti: NIfTI-1 and -2, plain and gzip, int16 with scaling and float32 (nibabel);
- nrrd: raw, gzip and ASCII encodings, both endians (pynrrd), attached data;
- multipart: STOW-RS requests (the Content-Type line, then the body) of real DICOM files,
  written by Python's email package (an independent multipart writer);
- oip: Open Inference Protocol requests written by tritonclient (JSON and binary tensor
  data), framed as ldct_serve::untrusted::oip reads them;
- dimse: P-DATA record streams of a C-ECHO and of C-STOREs of a real CT data set, the
  command sets written by pydicom (as pynetdicom does), framed as
  ldct_serve::untrusted::dimse reads them.
Existing files are kept. libFuzzer reads these beside fuzz/corpus/TARGET (committed), where it
writes what it finds.
"""

import gzip
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from conftest import _site_packages  # noqa: E402


def dicom_seeds(out: Path):
    sp = _site_packages()
    dirs = [sp / "pydicom" / "data" / "test_files", sp / "data_store" / "data"]
    n = 0
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.stat().st_size <= (4 << 20) and f.suffix.lower() in (".dcm", ""):
                head = f.read_bytes()[:132]
                if head[128:132] == b"DICM" or f.suffix.lower() == ".dcm":
                    shutil.copy(f, out / f"{n:04d}-{f.name}")
                    n += 1
    return n


def npy_seeds(out: Path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.normal(0, 100, (16, 16)).astype("<f4"),
        "i16": rng.integers(-1000, 1000, (8, 12)).astype("<i2"),
        "f64": rng.normal(0, 1, (4, 4)),
        "be": rng.normal(0, 1, (4, 6)).astype(">f4"),
        "fortran": np.asfortranarray(rng.normal(0, 1, (5, 7)).astype("<f4")),
        "3d": rng.normal(0, 1, (2, 3, 4)).astype("<f4"),
    }
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, a)
        (out / f"{name}.npy").write_bytes(buf.getvalue())
    return len(arrays)


def nifti_seeds(out: Path):
    import nibabel as nib
    rng = np.random.default_rng(1)
    n = 0
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        for dtype in (np.int16, np.float32):
            img = cls(rng.integers(-1000, 1000, (6, 5, 3)).astype(dtype), np.diag([0.7, 0.8, 2.5, 1.0]))
            if dtype == np.int16:
                img.header.set_slope_inter(2.0, -1024.0)
            raw = img.to_bytes()
            (out / f"{cls.__name__}-{np.dtype(dtype).name}.nii").write_bytes(raw)
            (out / f"{cls.__name__}-{np.dtype(dtype).name}.nii.gz").write_bytes(gzip.compress(raw))
            n += 2
    return n


def nrrd_seeds(out: Path, tmp: Path):
    import nrrd
    rng = np.random.default_rng(2)
    n = 0
    for enc in ("raw", "gzip", "ascii"):
        for endian in ("little", "big"):
            path = tmp / f"{enc}-{endian}.nrrd"
            data = rng.integers(-1000, 1000, (5, 4, 3)).astype(np.int16)
            nrrd.write(str(path), data, {"encoding": enc, "endian": endian, "space": "left-posterior-superior",
                                         "space directions": np.diag([0.7, 0.7, 2.5]).tolist(),
                                         "space origin": [0.0, 0.0, 0.0]})
            shutil.copy(path, out / path.name)
            n += 1
    return n


def multipart_seeds(out: Path, dicom_dir: Path):
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.policy import HTTP

    files = sorted(dicom_dir.iterdir())
    small = [f for f in files if f.stat().st_size <= (64 << 10)]
    n = 0
    for count in (1, 2, 3):
        for start in range(0, min(len(small), 12), 4):
            msg = MIMEMultipart("related", boundary=f"ldct-fuzz-seed-{n}")
            msg.set_param("type", "application/dicom")
            for f in small[start:start + count]:
                part = MIMEApplication(f.read_bytes(), "dicom", _encoder=lambda p: None)
                msg.attach(part)
            raw = msg.as_bytes(policy=HTTP)
            head, body = raw.split(b"\r\n\r\n", 1)
            content_type = next(line for line in head.split(b"\r\n")
                                if line.lower().startswith(b"content-type:")).split(b":", 1)[1].strip()
            (out / f"stow-{count}-{start}.txt").write_bytes(content_type + b"\n" + body)
            n += 1
    return n


def oip_seeds(out: Path):
    import struct

    from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

    rng = np.random.default_rng(3)
    n = 0
    for binary in (False, True):
        for shape, dtype in (([1, 1, 8, 8], "FP32"), ([2, 1, 4, 6], "FP32"), ([8, 8], "INT16")):
            data = rng.normal(0, 100, shape).astype(np.float32 if dtype == "FP32" else np.int16)
            inp = InferInput("input", shape, dtype)
            inp.set_data_from_numpy(data, binary_data=binary)
            outputs = [InferRequestedOutput("output", binary_data=binary)]
            body, json_size = InferenceServerClient.generate_request_body([inp], outputs=outputs)
            framed = (b"\x01" + struct.pack("<H", json_size) if json_size is not None else b"\x00") + body
            (out / f"{'binary' if binary else 'json'}-{dtype}-{'x'.join(map(str, shape))}.bin").write_bytes(framed)
            n += 1
    return n


def dimse_record(pc: int, command: bool, last: bool, data: bytes) -> bytes:
    import struct

    return struct.pack("<BBH", pc, (1 if command else 0) | (2 if last else 0), len(data)) + data


def dimse_command(**elements) -> bytes:
    """A DIMSE command set written by pydicom (implicit VR little endian, group 0000 with
    its group length), as pynetdicom writes them."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    for k, v in elements.items():
        setattr(ds, k, v)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    ds.CommandGroupLength = len(body.getvalue())
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()


def dimse_seeds(out: Path, dicom_dir: Path):
    """P-DATA record streams as ldct_serve::untrusted::dimse reads them: a C-ECHO, and a
    C-STORE of a real CT data set (pydicom's CT_small, implicit VR little endian) split
    into fragments of several sizes."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    echo = dimse_command(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x0030,
                         MessageID=1, CommandDataSetType=0x0101)
    (out / "echo.bin").write_bytes(dimse_record(1, True, True, echo))
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    data = buf.getvalue()
    store = dimse_command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", CommandField=0x0001,
                          MessageID=2, Priority=0, CommandDataSetType=0x0000,
                          AffectedSOPInstanceUID=ds.SOPInstanceUID)
    n = 1
    for size in (65535, 16384, 4096):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        stream = dimse_record(3, True, True, store) + b"".join(
            dimse_record(3, False, i == len(chunks) - 1, c) for i, c in enumerate(chunks))
        (out / f"store-{size}.bin").write_bytes(stream)
        n += 1
    return n


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds")
    dirs = {t: root / t for t in ("dicom", "npy", "nifti", "nrrd", "multipart", "oip", "dimse")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    tmp = root / ".tmp"
    tmp.mkdir(exist_ok=True)
    counts = {
        "dicom": dicom_seeds(dirs["dicom"]),
        "npy": npy_seeds(dirs["npy"]),
        "nifti": nifti_seeds(dirs["nifti"]),
        "nrrd": nrrd_seeds(dirs["nrrd"], tmp),
        "multipart": multipart_seeds(dirs["multipart"], dirs["dicom"]),
        "oip": oip_seeds(dirs["oip"]),
        "dimse": dimse_seeds(dirs["dimse"], dirs["dicom"]),
    }
    shutil.rmtree(tmp)
    print("fuzz seeds:", ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
