//! The DICOM reader against pydicom (the independent reference, run in the project venv).
//!
//! Every real CT file of pydicom / pydicom-data, and files covering each transfer syntax,
//! is decoded by `ldct_imaging::dicom`, written as float32 .npy, and compared in Python
//! with pydicom's `pixel_array * RescaleSlope + RescaleIntercept` (per frame, from the
//! functional groups for Enhanced CT) cast to float32: equal bit for bit, with the same
//! pixel spacing, position and orientation. Then: errors (truncated, not DICOM, no pixel
//! data, unsupported), robustness (cut and mutated files never panic), and series folders.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

use ldct_imaging::dicom::{self, DicomSlices};
use ldct_imaging::{npy, ImagingError};
use ldct_testkit::{dicom_test_file, real_ct_files, run_python};

/// Codec and layout coverage beyond the CT files (pydicom test data, any modality).
const CODEC_FILES: &[&str] = &[
    "MR_small_implicit.dcm",           // implicit VR LE
    "MR_small_bigendian.dcm",          // explicit VR BE, 16-bit signed
    "emri_small_big_endian.dcm",       // BE, 10 frames, 12 of 16 bits
    "rtdose_expb.dcm",                 // BE, 32-bit, 15 frames (OW word order)
    "rtdose.dcm",                      // implicit, 32-bit unsigned
    "MR_small_RLE.dcm",                // RLE
    "emri_small_RLE.dcm",              // RLE, 10 frames
    "rtdose_rle.dcm",                  // RLE, 32-bit, 15 frames
    "image_dfl.dcm",                   // deflated explicit VR LE
    "JPEG-LL.dcm",                     // JPEG lossless P14, 16-bit signed
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  // JPEG lossless SV1, 8-bit
    "MR_small_jp2klossless.dcm",       // JPEG 2000 lossless, signed
    "emri_small_jpeg_2k_lossless.dcm", // JPEG 2000 lossless, 10 frames
    "MR2_J2KR.dcm",                    // JPEG 2000 lossless, rescale slope 3.77
    "JPEG2000.dcm",                    // JPEG 2000 lossy, signed
    "MR2_J2KI.dcm",                    // JPEG 2000 lossy, unsigned 12-bit
    "RG3_J2KI.dcm",                    // JPEG 2000 lossy, 10-bit, 1760x1760
    "examples_overlay.dcm",            // 12 of 16 bits with overlay bits above
    "mlut_18.dcm",                     // 12-bit signed: sign extension from bit 11
];

/// pydicom's reference for each `dcm<TAB>npy` line of the manifest (argv[1]), decoded
/// with pydicom's default plugin or the one named in argv[2]: prints
/// `n_diff<TAB>max_abs_diff<TAB>shape_ok<TAB>geometry` where geometry is, per frame,
/// `spacing|position|orientation` (Python float reprs, `None` when absent) joined by `;`.
const COMPARE: &str = r#"
import sys, warnings
import numpy as np, pydicom
from pydicom.pixels import pixel_array
warnings.simplefilter("ignore")

def groups(ds, i, seq):
    out = []
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    sh = ds.get("SharedFunctionalGroupsSequence")
    for g in ([pf[i]] if pf is not None and i < len(pf) else []) + ([sh[0]] if sh else []):
        s = g.get(seq)
        if s:
            out.append(s[0])
    return out + [ds]

def first(ds, i, seq, kw):
    for g in groups(ds, i, seq):
        if kw in g and g[kw].value is not None:
            return ",".join(repr(float(v)) for v in g[kw].value)
    return "None"

plugin = sys.argv[2] if len(sys.argv) > 2 else ""
for line in open(sys.argv[1]).read().splitlines():
    dcm, ours = line.split("\t")
    ds = pydicom.dcmread(dcm)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    px = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    arr = px.reshape(n, ds.Rows, ds.Columns)
    ref = np.empty(arr.shape, np.float32)
    geo = []
    for i in range(n):
        slope, intercept = 1.0, 0.0
        for g in groups(ds, i, "PixelValueTransformationSequence"):
            if "RescaleSlope" in g or "RescaleIntercept" in g:
                slope = float(g.get("RescaleSlope", 1.0))
                intercept = float(g.get("RescaleIntercept", 0.0))
                break
        ref[i] = (arr[i] * slope + intercept).astype(np.float32)
        geo.append("|".join([
            first(ds, i, "PixelMeasuresSequence", "PixelSpacing"),
            first(ds, i, "PlanePositionSequence", "ImagePositionPatient"),
            first(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"),
        ]))
    got = np.load(ours)
    ok = got.shape == ref.shape and got.dtype == np.float32
    diff = np.abs(got.astype(np.float64) - ref) if ok else np.array([np.inf])
    print(f"{int((diff != 0).sum())}\t{float(diff.max())}\t{ok}\t{';'.join(geo)}")
"#;

fn fmt_geo(v: Option<&[f64]>) -> String {
    v.map_or("None".into(), |v| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn our_geometry(s: &DicomSlices) -> String {
    s.frames
        .iter()
        .map(|f| {
            [
                fmt_geo(f.pixel_spacing.as_ref().map(|a| &a[..])),
                fmt_geo(f.position.as_ref().map(|a| &a[..])),
                fmt_geo(f.orientation.as_ref().map(|a| &a[..])),
            ]
            .join("|")
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Decodes `files` with our reader, compares each with pydicom (`plugin`: pydicom's
/// decoding plugin, "" for its default); returns `(file, n_diff, max_abs_diff)` after
/// asserting shape and geometry.
fn compare(files: &[PathBuf], plugin: &str) -> Vec<(PathBuf, usize, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    let mut ours = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let s = dicom::read_dicom_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let out = tmp.path().join(format!("{i}.npy"));
        npy::write_volume(&out, &s.to_volume().unwrap().hu).unwrap();
        manifest.push_str(&format!("{}\t{}\n", f.display(), out.display()));
        ours.push(s);
    }
    let list = tmp.path().join("manifest.tsv");
    std::fs::write(&list, manifest).unwrap();
    let out = run_python(COMPARE, &[list.to_str().unwrap(), plugin]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), files.len(), "python output:\n{out}");
    let mut results = Vec::new();
    for ((f, s), line) in files.iter().zip(&ours).zip(lines) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[2], "True", "{}: shape or dtype differs", f.display());
        assert_eq!(
            cols[3],
            our_geometry(s),
            "{}: geometry differs",
            f.display()
        );
        let (n, max): (usize, f64) = (cols[0].parse().unwrap(), cols[1].parse().unwrap());
        println!(
            "{:40} {} frame(s) {}x{} ts {:24} differing pixels {n}, max |diff| {max}",
            f.file_name().unwrap().to_string_lossy(),
            s.meta.frames,
            s.meta.rows,
            s.meta.cols,
            s.meta.transfer_syntax_uid
        );
        results.push((f.clone(), n, max));
    }
    results
}

fn assert_exact(results: &[(PathBuf, usize, f64)]) {
    for (f, n, max) in results {
        assert_eq!(
            *n,
            0,
            "{}: {n} pixels differ from pydicom (max {max})",
            f.display()
        );
    }
}

#[test]
fn real_ct_files_equal_pydicom_exactly() {
    let files = real_ct_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "CT_small.dcm",
        "693_UNCI.dcm",
        "693_UNCR.dcm",
        "693_J2KR.dcm",
        "693_J2KI.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "bad_sequence.dcm",
        "explicit_VR-UN.dcm",
        "eCT_Supplemental.dcm",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert_exact(&compare(&files, ""));
    for f in &files {
        let s = dicom::read_dicom_file(f).unwrap();
        assert_eq!(s.meta.modality.as_deref(), Some("CT"));
        assert!(s.frames.iter().all(|f| f.pixel_spacing.is_some()));
    }
}

#[test]
fn enhanced_ct_uses_functional_groups() {
    let s = dicom::read_dicom_file(&dicom_test_file("eCT_Supplemental.dcm")).unwrap();
    assert_eq!((s.meta.frames, s.frames.len()), (2, 2));
    let bytes = std::fs::read(dicom_test_file("eCT_Supplemental.dcm")).unwrap();
    let obj = dicom::parse_dicom_bytes(&bytes).unwrap();
    assert_eq!(dicom::object_meta(&obj).unwrap(), s.meta);
    assert_eq!(dicom::decode_object(&obj).unwrap(), s);
    assert_eq!(s.meta.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2.1");
    // The two frames are different slices, each with its own position.
    let (a, b) = (s.frames[0].position.unwrap(), s.frames[1].position.unwrap());
    assert_ne!(a, b);
    assert_ne!(
        s.meta.rescale_intercept, 0.0,
        "rescale comes from the functional groups"
    );
}

#[test]
fn pixel_representation_mismatch_follows_pydicom() {
    // J2K codestream unsigned 13-bit, PixelRepresentation 1: pydicom re-interprets the
    // samples as signed 13-bit values (apply_j2k_sign_correction); so do we.
    let s = dicom::read_dicom_file(&dicom_test_file("J2K_pixelrep_mismatch.dcm")).unwrap();
    let min = s.frames[0].hu.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(min, -2000.0);
}

#[test]
fn codecs_equal_pydicom_exactly() {
    let files: Vec<PathBuf> = CODEC_FILES.iter().map(|n| dicom_test_file(n)).collect();
    assert_exact(&compare(&files, ""));
}

/// Writes, with pydicom and Pillow, an 8-bit grayscale JPEG baseline image made from
/// CT_small (pydicom ships none), with rescale slope 2.5 and intercept -1000.
const MAKE_FIXTURES: &str = r#"
import io, sys
import numpy as np, pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit
src, out = sys.argv[1], sys.argv[2]
ds = pydicom.dcmread(src)
a = ds.pixel_array.astype(np.float64)
img = np.clip((a - a.min()) / (a.max() - a.min()) * 255, 0, 255).astype(np.uint8)
buf = io.BytesIO()
Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=85)
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1000"
ds.PixelData = encapsulate([buf.getvalue()])
ds["PixelData"].VR = "OB"
ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
ds.save_as(out + "/jpeg_baseline.dcm", enforce_file_format=True)
"#;

/// Lossy JPEG is the one place where decoders legitimately differ: the standard lets
/// IDCTs disagree by one grey level (ISO 10918-2), and pydicom's two decoders, libjpeg
/// (pylibjpeg) and libjpeg-turbo (Pillow), disagree with each other on this very image.
/// jpeg-decoder must match each of them within one stored unit (`|RescaleSlope|` in HU)
/// on at most 5% of the pixels. Lossless JPEG and JPEG 2000 (lossy too) are exact.
#[test]
fn jpeg_baseline_grayscale_within_one_grey_level_of_pydicom() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dicom_test_file("CT_small.dcm");
    run_python(
        MAKE_FIXTURES,
        &[src.to_str().unwrap(), tmp.path().to_str().unwrap()],
    );
    let f = tmp.path().join("jpeg_baseline.dcm");
    let s = dicom::read_dicom_file(&f).unwrap();
    assert_eq!(s.meta.transfer_syntax_uid, "1.2.840.10008.1.2.4.50");
    assert_eq!(s.meta.rescale_slope, 2.5);
    let pixels = (s.meta.rows * s.meta.cols) as usize;
    for plugin in ["pylibjpeg", "pillow"] {
        let (_, n, max) = compare(std::slice::from_ref(&f), plugin).remove(0);
        println!("jpeg-decoder vs pydicom/{plugin}: {n} of {pixels} pixels differ, max {max} HU");
        assert!(
            max <= 2.5,
            "{plugin}: max |diff| {max} HU is more than one grey level"
        );
        assert!(n * 20 <= pixels, "{plugin}: {n} of {pixels} pixels differ");
    }
    let refs = run_python(
        "import sys, numpy as np, pydicom\nfrom pydicom.pixels import pixel_array\n\
         ds = pydicom.dcmread(sys.argv[1])\n\
         a, b = (pixel_array(ds, decoding_plugin=p).astype(int) for p in ('pylibjpeg', 'pillow'))\n\
         print(int((a != b).sum()), int(abs(a - b).max()))",
        &[f.to_str().unwrap()],
    );
    println!("pydicom/pylibjpeg vs pydicom/pillow: (differing pixels, max) = {refs}");
}

#[test]
fn preamble_and_meta_group_are_optional() {
    let bytes = std::fs::read(dicom_test_file("CT_small.dcm")).unwrap();
    let full = dicom::read_dicom_bytes(&bytes).unwrap();
    // No preamble: the stream starts with DICM.
    let no_preamble = dicom::read_dicom_bytes(&bytes[128..]).unwrap();
    assert_eq!(no_preamble.frames, full.frames);
    // No meta group at all: a bare explicit VR little endian data set.
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let bare = &bytes[144 + group_len..];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bare.dcm");
    std::fs::write(&path, bare).unwrap();
    assert!(dicom::is_dicom_file(&path));
    let s = dicom::read_dicom_file(&path).unwrap();
    assert_eq!(s.frames, full.frames);
    assert_eq!(s.meta.sop_instance_uid, full.meta.sop_instance_uid);
    // pydicom's rtstruct.dcm is a bare implicit VR data set without pixel data.
    let rt = dicom_test_file("rtstruct.dcm");
    assert!(dicom::is_dicom_file(&rt));
    assert!(matches!(
        dicom::read_dicom_file(&rt),
        Err(ImagingError::NotAnImage(_))
    ));
}

fn err_of(bytes: &[u8]) -> ImagingError {
    match dicom::read_dicom_bytes(bytes) {
        Ok(s) => panic!("decoded {} frame(s), expected an error", s.frames.len()),
        Err(e) => e,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:02X?} not found"))
}

#[test]
fn truncated_files_are_clear_errors() {
    let bytes = std::fs::read(dicom_test_file("CT_small.dcm")).unwrap();
    let pixel_data = find(&bytes, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    let cases = [
        (0, "empty"),
        (100, "inside the preamble"),
        (131, "inside DICM"),
        (140, "inside the meta group"),
        (600, "inside the data set"),
        (pixel_data, "just before Pixel Data"),
        (pixel_data + 5, "inside the Pixel Data header"),
        (pixel_data + 12 + 1000, "inside the pixel data"),
        (bytes.len() - 1, "one byte short"),
    ];
    for (cut, what) in cases {
        let e = err_of(&bytes[..cut]);
        println!("cut at {cut} ({what}): {e}");
        match (&e, cut < 132) {
            (ImagingError::NotDicom(_), true) => {}
            (ImagingError::DicomCorrupt(m), false) => {
                assert!(m.contains("truncated"), "{what}: {m}")
            }
            _ => panic!("cut at {cut} ({what}): unexpected {e:?}"),
        }
    }
    // A compressed file cut inside its fragments, and the one pydicom ships.
    let j2k = std::fs::read(dicom_test_file("693_J2KR.dcm")).unwrap();
    assert!(matches!(
        err_of(&j2k[..j2k.len() / 2]),
        ImagingError::DicomCorrupt(_)
    ));
    let e = dicom::read_dicom_file(&dicom_test_file("MR_truncated.dcm")).unwrap_err();
    assert!(matches!(e, ImagingError::DicomCorrupt(_)), "{e:?}");
}

#[test]
fn every_cut_point_is_an_error_never_a_panic() {
    for (name, step) in [
        ("CT_small.dcm", 7),
        ("MR_small_RLE.dcm", 3),
        ("MR_small_jp2klossless.dcm", 5),
        ("JPEG-LL.dcm", 499),
        ("image_dfl.dcm", 97),
        ("eCT_Supplemental.dcm", 1999),
    ] {
        let bytes = std::fs::read(dicom_test_file(name)).unwrap();
        let full = dicom::read_dicom_bytes(&bytes).unwrap();
        for cut in (0..bytes.len()).step_by(step) {
            match dicom::read_dicom_bytes(&bytes[..cut]) {
                Err(ImagingError::NotDicom(_) | ImagingError::DicomCorrupt(_)) => {}
                // Cut after the pixel data (e.g. in trailing padding): the image is whole.
                Ok(s) if s.frames == full.frames => {}
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
    }
}

/// Random byte changes (half of them in the header) must give a result or an error,
/// never a panic, and quickly: a mutated length must not make the parser reserve
/// gigabytes (see `dicom::MAX_DEPTH` and the structure pre-check).
#[test]
fn mutated_files_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut slowest = std::time::Duration::ZERO;
    let files = [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "image_dfl.dcm",
        "eCT_Supplemental.dcm",
    ];
    for name in files {
        let original = std::fs::read(dicom_test_file(name)).unwrap();
        for _ in 0..300 {
            let mut bytes = original.clone();
            for _ in 0..rng.random_range(1..=8) {
                let end = if rng.random_bool(0.5) {
                    2048.min(bytes.len())
                } else {
                    bytes.len()
                };
                let i = rng.random_range(0..end);
                bytes[i] = rng.random();
            }
            let t = std::time::Instant::now();
            let kind = match dicom::read_dicom_bytes(&bytes) {
                Ok(_) => "Ok".to_string(),
                Err(e) => format!("{e:?}").split('(').next().unwrap().to_string(),
            };
            slowest = slowest.max(t.elapsed());
            *outcomes.entry(kind).or_default() += 1;
        }
    }
    println!(
        "outcomes of {} mutated files: {outcomes:?}, slowest {slowest:?}",
        300 * files.len()
    );
    assert!(slowest.as_secs() < 5, "a mutated file took {slowest:?}");
}

#[test]
fn non_dicom_and_non_image_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not DICOM\n".repeat(20)).unwrap();
    assert!(!dicom::is_dicom_file(&text));
    assert!(!dicom::is_dicom_file(tmp.path()));
    assert!(matches!(
        dicom::read_dicom_file(&text),
        Err(ImagingError::NotDicom(_))
    ));
    assert!(matches!(err_of(b""), ImagingError::NotDicom(_)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let noise: Vec<u8> = (0..10_000).map(|_| rng.random()).collect();
    assert!(matches!(err_of(&noise), ImagingError::NotDicom(_)));
    let e = dicom::read_dicom_file(&tmp.path().join("missing.dcm")).unwrap_err();
    assert!(matches!(e, ImagingError::Io { .. }), "{e:?}");
    for name in [
        "rtplan.dcm",
        "test-SR.dcm",
        "waveform_ecg.dcm",
        "rtstruct.dcm",            // no meta group, implicit VR
        "ExplVR_BigEndNoMeta.dcm", // no meta group, explicit VR big endian
        "ExplVR_LitEndNoMeta.dcm", // no meta group, explicit VR little endian
    ] {
        let e = dicom::read_dicom_file(&dicom_test_file(name)).unwrap_err();
        assert!(matches!(e, ImagingError::NotAnImage(_)), "{name}: {e:?}");
        println!("{e}");
    }
    // A meta group without its group length still parses (dicom-rs alone refuses it):
    // an RT Image object stripped of its pixel data.
    match dicom::read_dicom_file(&dicom_test_file("no_meta_group_length.dcm")) {
        Err(ImagingError::DicomCorrupt(m)) if m.contains("without Pixel Data") => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_images_are_clear_errors() {
    let cases = [
        ("SC_rgb.dcm", "SamplesPerPixel 3"),
        // Implicit VR data set under an (explicit VR) JPEG transfer syntax: parsed anyway.
        ("SC_rgb_jpeg.dcm", "SamplesPerPixel 3"),
        ("examples_palette.dcm", "PALETTE COLOR"),
        ("liver_1frame.dcm", "BitsAllocated 1"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("JPGExtended.dcm", "12-bit lossy JPEG"),
    ];
    for (name, needle) in cases {
        match dicom::read_dicom_file(&dicom_test_file(name)) {
            Err(ImagingError::DicomUnsupported(m)) => {
                assert!(m.contains(needle), "{name}: {m}");
                println!("{m}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // An unknown transfer syntax (same length as the original UID, so the file stays valid).
    let mut bytes = std::fs::read(dicom_test_file("CT_small.dcm")).unwrap();
    let at = find(&bytes, b"1.2.840.10008.1.2.1\0");
    bytes[at..at + 20].copy_from_slice(b"1.2.3.4.5.6.7.8.9.10");
    match err_of(&bytes) {
        ImagingError::DicomUnsupported(m) => assert!(m.contains("1.2.3.4.5.6.7.8.9.10"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn hostile_headers_are_refused_cheaply() {
    let ct = std::fs::read(dicom_test_file("CT_small.dcm")).unwrap();
    // Pixel Data claiming 4 GiB: refused before dicom-rs reserves it.
    let mut huge = ct.clone();
    let at = find(&huge, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']) + 8;
    huge[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let t = std::time::Instant::now();
    assert!(matches!(err_of(&huge), ImagingError::DicomCorrupt(m) if m.contains("4294967280")));
    assert!(t.elapsed().as_millis() < 500, "took {:?}", t.elapsed());
    // Rows x Columns x Frames far beyond the limit.
    let mut big = ct.clone();
    for (tag, value) in [
        ([0x28, 0, 0x10, 0], 0xFFFFu16),
        ([0x28, 0, 0x11, 0], 0xFFFF),
    ] {
        let at = find(&big, &[tag[0], tag[1], tag[2], tag[3], b'U', b'S', 2, 0]) + 8;
        big[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
    match err_of(&big) {
        ImagingError::DicomUnsupported(m) => assert!(m.contains("limit"), "{m}"),
        e => panic!("{e:?}"),
    }
    // Sequences nested 100 deep (a bare explicit VR data set).
    let mut deep = Vec::new();
    for _ in 0..100 {
        deep.extend_from_slice(&[
            0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    assert!(matches!(err_of(&deep), ImagingError::DicomCorrupt(m) if m.contains("nested")));
}

#[test]
fn undefined_length_un_sequences_are_kept_opaque() {
    // pydicom's UN_sequence.dcm holds a private sequence as VR UN with undefined length
    // (implicit VR inside explicit VR), which dicom-rs alone misreads. Spliced into
    // CT_small before Pixel Data, the image must still decode exactly.
    let un = std::fs::read(dicom_test_file("UN_sequence.dcm")).unwrap();
    let element = &un[find(&un, &[0x53, 0x44, 0x0C, 0x10, b'U', b'N'])..];
    let ct = std::fs::read(dicom_test_file("CT_small.dcm")).unwrap();
    let at = find(&ct, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    let spliced = [&ct[..at], element, &ct[at..]].concat();
    let a = dicom::read_dicom_bytes(&spliced).unwrap();
    let b = dicom::read_dicom_bytes(&ct).unwrap();
    assert_eq!(a.frames, b.frames);
    // The file itself: a CT Image Storage object stripped of its pixel data.
    match dicom::read_dicom_bytes(&un) {
        Err(ImagingError::DicomCorrupt(m)) => assert!(m.contains("without Pixel Data"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Writes a series made from CT_small into argv[1]: six slices with distinct positions
/// and pixel offsets (100 x rank along z), shuffled file names and instance numbers, a
/// junk file, a subfolder; argv[2] == "noposition" drops the geometry.
const MAKE_SERIES: &str = r#"
import os, sys, pydicom
from pydicom.uid import generate_uid
src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
zs = [10.0, -5.0, 3.5, 0.0, 20.0, -12.0]
rank = {z: i for i, z in enumerate(sorted(zs))}
series = generate_uid()
for k, z in enumerate(zs):
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = rank[z] + 1
    ds.ImagePositionPatient = [-20.0, 7.5, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if mode == "noposition":
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    a = ds.pixel_array
    a += 100 * rank[z]
    ds.PixelData = a.tobytes()
    ds.save_as(os.path.join(out, f"img_{(k * 7) % 6}.dcm"), enforce_file_format=True)
open(os.path.join(out, "README.txt"), "w").write("not an image")
os.makedirs(os.path.join(out, "sub"), exist_ok=True)
pydicom.dcmread(src).save_as(os.path.join(out, "sub", "other.dcm"))
print(series)
"#;

fn make_series(dir: &Path, mode: &str) -> String {
    let src = dicom_test_file("CT_small.dcm");
    let out = run_python(
        MAKE_SERIES,
        &[src.to_str().unwrap(), dir.to_str().unwrap(), mode],
    );
    out.trim().to_string()
}

fn assert_ranked(slices: &[ldct_imaging::CtImage]) {
    assert_eq!(slices.len(), 6);
    for (i, s) in slices.iter().enumerate() {
        let d = &s.hu - &slices[0].hu;
        assert!(
            d.iter().all(|&v| v == 100.0 * i as f32),
            "slice {i} out of order"
        );
    }
}

#[test]
fn series_folder_is_sorted_along_the_normal() {
    let tmp = tempfile::tempdir().unwrap();
    make_series(tmp.path(), "position");
    let slices = dicom::read_series_dir(tmp.path(), None).unwrap();
    assert_ranked(&slices);
    let z: Vec<f64> = slices.iter().map(|s| s.slice_location().unwrap()).collect();
    assert_eq!(z, [-12.0, -5.0, 0.0, 3.5, 10.0, 20.0]);
    // Without positions: InstanceNumber order.
    let tmp = tempfile::tempdir().unwrap();
    make_series(tmp.path(), "noposition");
    assert_ranked(&dicom::read_series_dir(tmp.path(), None).unwrap());
}

#[test]
fn series_folder_with_two_series_needs_a_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let a = make_series(tmp.path(), "position");
    let other = tmp.path().join("ct_small.dcm");
    std::fs::copy(dicom_test_file("CT_small.dcm"), &other).unwrap();
    let b = dicom::read_dicom_file(&other)
        .unwrap()
        .meta
        .series_instance_uid
        .unwrap();
    match dicom::read_series_dir(tmp.path(), None) {
        Err(ImagingError::Invalid(m)) => {
            assert!(m.contains(&a) && m.contains(&b), "{m}");
            println!("{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_ranked(&dicom::read_series_dir(tmp.path(), Some(&a)).unwrap());
    assert_eq!(
        dicom::read_series_dir(tmp.path(), Some(&b)).unwrap().len(),
        1
    );
    assert!(dicom::read_series_dir(tmp.path(), Some("1.2.3")).is_err());
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("a.txt"), "x").unwrap();
    assert!(matches!(
        dicom::read_series_dir(empty.path(), None),
        Err(ImagingError::Invalid(m)) if m.contains("no DICOM image")
    ));
}
