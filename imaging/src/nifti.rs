//! NIfTI-1 and NIfTI-2 volumes (`.nii`, `.nii.gz`): single-file images whose 348-
//! (NIfTI-1) or 540-byte (NIfTI-2) header is followed, at `vox_offset`, by the voxels.
//!
//! - Either byte order (told by `sizeof_hdr`), plain or gzip-compressed (told by the
//!   gzip magic, whatever the file is called).
//! - Sample types: uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32,
//!   float64 (complex and RGB types are refused).
//! - 2-D or 3-D images (a 4-D file with a single time point is a 3-D one): `dim[1]`
//!   columns, `dim[2]` rows, `dim[3]` slices.
//! - Values are `stored * scl_slope + scl_inter` when `scl_slope` is finite and non-zero
//!   (the NIfTI rule), else as stored: HU for CT.
//! - Orientation: the sform (when `sform_code > 0`), else the qform (`qform_code > 0`)
//!   gives the voxel axes in RAS patient coordinates; axial volumes are turned to the
//!   display orientation of DICOM ([`crate::orient`]). Without either, the volume is
//!   kept as stored.
//! - Bad input is an error, never a panic or an unbounded allocation: the header is
//!   checked before any voxel is read, and no more than the declared voxel bytes (at
//!   most [`MAX_VOXEL_BYTES`]) are read or inflated.
//!
//! Header/image pairs (`.hdr` + `.img`) are not read: convert them to `.nii` first.

use std::io::Read;
use std::path::Path;

use ndarray::Array3;
use serde::Serialize;

use crate::error::{ImagingError, Result};
use crate::image::CtVolume;
use crate::orient::{self, AxisDirections, Reorientation};
use crate::sample::{self, Endian, SampleType};

/// Voxel data larger than this (as stored) is refused before it is read.
pub const MAX_VOXEL_BYTES: usize = 2 << 30;
/// A `vox_offset` beyond this is refused (extensions are small).
const MAX_VOX_OFFSET: usize = 16 << 20;

/// What the header says, for records and checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NiftiMeta {
    /// 1 or 2.
    pub version: u8,
    /// The stored sample type (numpy's name).
    pub datatype: &'static str,
    /// `[slices, rows, cols]` as stored.
    pub shape: [usize; 3],
    /// Voxel size `[x (columns), y (rows), z (slices)]` in mm (`pixdim[1..4]`).
    pub voxel_mm: [f64; 3],
    /// `(slope, intercept)` applied, when the header has a scaling.
    pub scaling: Option<(f64, f64)>,
    /// `sform`, `qform` or `none`: where the orientation came from.
    pub orientation_from: &'static str,
    pub reoriented: Reorientation,
    /// The header's `descrip` text.
    pub description: String,
}

fn bad(msg: impl Into<String>) -> ImagingError {
    ImagingError::Invalid(format!("NIfTI: {}", msg.into()))
}

/// Reads a `.nii` or `.nii.gz` file.
pub fn read_nifti(path: &Path) -> Result<(CtVolume, NiftiMeta)> {
    let file = std::fs::File::open(path).map_err(|e| ImagingError::io(path, e))?;
    parse_nifti(std::io::BufReader::new(file), MAX_VOXEL_BYTES)
        .map_err(|e| ImagingError::Invalid(format!("{}: {e}", path.display())))
}

/// Parses a NIfTI file from a reader (plain or gzip), reading at most the header,
/// `vox_offset` and `max_voxel_bytes` of voxels.
pub fn parse_nifti(mut reader: impl Read, max_voxel_bytes: usize) -> Result<(CtVolume, NiftiMeta)> {
    let mut magic = [0u8; 2];
    reader
        .read_exact(&mut magic)
        .map_err(|_| bad("file is shorter than a header"))?;
    let chained = std::io::Cursor::new(magic).chain(reader);
    if magic == [0x1f, 0x8b] {
        parse_plain(flate2::read::MultiGzDecoder::new(chained), max_voxel_bytes)
    } else {
        parse_plain(chained, max_voxel_bytes)
    }
}

/// The header fields ldct uses, from either version.
struct Header {
    version: u8,
    endian: Endian,
    dims: [i64; 8],
    datatype: i16,
    bitpix: i16,
    pixdim: [f64; 8],
    vox_offset: f64,
    scl_slope: f64,
    scl_inter: f64,
    qform_code: i32,
    sform_code: i32,
    quatern: [f64; 3],
    srow: [[f64; 4]; 3],
    description: String,
}

struct Fields<'a> {
    b: &'a [u8],
    endian: Endian,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[at..at + N]);
        if self.endian == Endian::Big {
            out.reverse();
        }
        out
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.bytes(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.bytes(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.bytes(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f64::from(f32::from_le_bytes(self.bytes(at)))
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.bytes(at))
    }
    fn text(&self, at: usize, len: usize) -> String {
        let raw = &self.b[at..at + len];
        let end = raw.iter().position(|&c| c == 0).unwrap_or(len);
        String::from_utf8_lossy(&raw[..end]).trim().to_string()
    }
}

fn read_header(reader: &mut impl Read) -> Result<(Header, usize)> {
    let mut b = vec![0u8; 540];
    reader
        .read_exact(&mut b[..348])
        .map_err(|_| bad("file is shorter than a NIfTI-1 header (348 bytes)"))?;
    let size_le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let size_be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (size, endian) = if size_le == 348 || size_le == 540 {
        (size_le, Endian::Little)
    } else if size_be == 348 || size_be == 540 {
        (size_be, Endian::Big)
    } else {
        return Err(bad(format!(
            "sizeof_hdr is {size_le}, not 348 (NIfTI-1) or 540 (NIfTI-2): not a NIfTI file"
        )));
    };
    let f = Fields { b: &b, endian };
    if size == 348 {
        match &b[344..348] {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err(bad(
                    "a header/image pair (.hdr + .img) is not supported: convert it to a \
                     single .nii file",
                ))
            }
            m => return Err(bad(format!("bad magic {m:?} (expected \"n+1\")"))),
        }
        let mut dims = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for k in 0..8 {
            dims[k] = i64::from(f.i16(40 + 2 * k));
            pixdim[k] = f.f32(76 + 4 * k);
        }
        let srow = [0, 1, 2].map(|r| [0, 1, 2, 3].map(|c| f.f32(280 + 16 * r + 4 * c)));
        let header = Header {
            version: 1,
            endian,
            dims,
            datatype: f.i16(70),
            bitpix: f.i16(72),
            pixdim,
            vox_offset: f.f32(108),
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            qform_code: i32::from(f.i16(252)),
            sform_code: i32::from(f.i16(254)),
            quatern: [f.f32(256), f.f32(260), f.f32(264)],
            srow,
            description: f.text(148, 80),
        };
        return Ok((header, 348));
    }
    reader
        .read_exact(&mut b[348..540])
        .map_err(|_| bad("file is shorter than a NIfTI-2 header (540 bytes)"))?;
    let f = Fields { b: &b, endian };
    if &b[4..8] != b"n+2\0" {
        return Err(bad(format!("bad magic {:?} (expected \"n+2\")", &b[4..12])));
    }
    let mut dims = [0i64; 8];
    let mut pixdim = [0f64; 8];
    for k in 0..8 {
        dims[k] = f.i64(16 + 8 * k);
        pixdim[k] = f.f64(104 + 8 * k);
    }
    let srow = [0, 1, 2].map(|r| [0, 1, 2, 3].map(|c| f.f64(400 + 32 * r + 8 * c)));
    let header = Header {
        version: 2,
        endian,
        dims,
        datatype: f.i16(12),
        bitpix: f.i16(14),
        pixdim,
        vox_offset: f.i64(168) as f64,
        scl_slope: f.f64(176),
        scl_inter: f.f64(184),
        qform_code: f.i32(344),
        sform_code: f.i32(348),
        quatern: [f.f64(352), f.f64(360), f.f64(368)],
        srow,
        description: f.text(240, 80),
    };
    Ok((header, 540))
}

fn sample_type(datatype: i16) -> Result<SampleType> {
    Ok(match datatype {
        2 => SampleType::U8,
        4 => SampleType::I16,
        8 => SampleType::I32,
        16 => SampleType::F32,
        64 => SampleType::F64,
        256 => SampleType::I8,
        512 => SampleType::U16,
        768 => SampleType::U32,
        1024 => SampleType::I64,
        1280 => SampleType::U64,
        other => {
            return Err(bad(format!(
                "datatype {other} is not supported (expected an integer or real type; \
                 complex and RGB images are not CT)"
            )))
        }
    })
}

/// The in-plane axis directions (RAS) the header states, and which transform said so.
fn directions(h: &Header) -> Option<(AxisDirections, &'static str)> {
    if h.sform_code > 0 {
        let col = [h.srow[0][0], h.srow[1][0], h.srow[2][0]];
        let row = [h.srow[0][1], h.srow[1][1], h.srow[2][1]];
        return Some((AxisDirections::from_ras(col, row), "sform"));
    }
    if h.qform_code > 0 {
        let [b, c, d] = h.quatern;
        let a2 = 1.0 - (b * b + c * c + d * d);
        let (a, b, c, d) = if a2 < 1e-7 {
            // The NIfTI rule: a 180-degree rotation, (b, c, d) renormalised.
            let n = (b * b + c * c + d * d).sqrt();
            (0.0, b / n, c / n, d / n)
        } else {
            (a2.sqrt(), b, c, d)
        };
        let col = [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c + a * d),
            2.0 * (b * d - a * c),
        ];
        let row = [
            2.0 * (b * c - a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d + a * b),
        ];
        return Some((AxisDirections::from_ras(col, row), "qform"));
    }
    None
}

fn parse_plain(mut reader: impl Read, max_voxel_bytes: usize) -> Result<(CtVolume, NiftiMeta)> {
    let (h, header_len) = read_header(&mut reader)?;
    let ndim = h.dims[0];
    if !(2..=7).contains(&ndim) {
        return Err(bad(format!("dim[0] is {ndim}, expected 2 to 7")));
    }
    let ndim = ndim as usize;
    for k in 1..=ndim {
        if h.dims[k] < 1 {
            return Err(bad(format!("dim[{k}] is {}", h.dims[k])));
        }
    }
    if let Some(k) = (4..=ndim).find(|&k| h.dims[k] != 1) {
        return Err(bad(format!(
            "dim[{k}] is {}: a {ndim}-D image with more than one volume is not a CT volume",
            h.dims[k]
        )));
    }
    let to_usize =
        |v: i64| usize::try_from(v).map_err(|_| bad(format!("dimension {v} is too large")));
    let cols = to_usize(h.dims[1])?;
    let rows = to_usize(h.dims[2])?;
    let slices = if ndim >= 3 { to_usize(h.dims[3])? } else { 1 };
    let ty = sample_type(h.datatype)?;
    if h.bitpix != 0 && h.bitpix as usize != 8 * ty.size() {
        return Err(bad(format!(
            "bitpix {} does not match datatype {} ({} bits)",
            h.bitpix,
            ty.name(),
            8 * ty.size()
        )));
    }
    let nbytes = sample::byte_len(&[slices, rows, cols], ty, max_voxel_bytes)
        .map_err(|e| bad(e.to_string()))?;
    if !(h.vox_offset.is_finite() && h.vox_offset >= header_len as f64) {
        return Err(bad(format!(
            "vox_offset {} is before the end of the {header_len}-byte header",
            h.vox_offset
        )));
    }
    let vox_offset = h.vox_offset as usize;
    if vox_offset > MAX_VOX_OFFSET {
        return Err(bad(format!("vox_offset {vox_offset} is implausibly large")));
    }
    // Skip extensions up to the voxels.
    let skip = (vox_offset - header_len) as u64;
    let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
        .map_err(|e| bad(format!("cannot read the file: {e}")))?;
    if skipped != skip {
        return Err(bad("file ends before vox_offset"));
    }
    let mut data = Vec::new();
    reader
        .take(nbytes as u64)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the voxels: {e}")))?;
    if data.len() < nbytes {
        return Err(bad(format!(
            "truncated: {slices}x{rows}x{cols} {} needs {nbytes} bytes of voxels, found {}",
            ty.name(),
            data.len()
        )));
    }
    let mut values = sample::decode(&data, ty, h.endian);
    drop(data);
    let scaling = (h.scl_slope.is_finite() && h.scl_slope != 0.0 && h.scl_inter.is_finite())
        .then_some((h.scl_slope, h.scl_inter));
    if let Some((slope, inter)) = scaling {
        if (slope, inter) != (1.0, 0.0) {
            for v in &mut values {
                *v = (f64::from(*v) * slope + inter) as f32;
            }
        }
    }
    if !values.iter().all(|v| v.is_finite()) {
        return Err(bad("the image holds NaN or infinite values"));
    }
    let volume =
        Array3::from_shape_vec((slices, rows, cols), values).map_err(|e| bad(e.to_string()))?;
    let voxel_mm = [h.pixdim[1].abs(), h.pixdim[2].abs(), h.pixdim[3].abs()];
    let spacing = [voxel_mm[1], voxel_mm[0]];
    let (volume, spacing, reoriented, from) = match directions(&h) {
        Some((dirs, from)) => {
            let (v, s, r) = orient::to_display(volume, spacing, dirs);
            (v, s, r, from)
        }
        None => (volume, spacing, Reorientation::default(), "none"),
    };
    let spacing_ok = spacing.iter().all(|v| v.is_finite() && *v > 0.0);
    let meta = NiftiMeta {
        version: h.version,
        datatype: ty.name(),
        shape: [slices, rows, cols],
        voxel_mm,
        scaling,
        orientation_from: from,
        reoriented,
        description: h.description,
    };
    Ok((
        CtVolume {
            hu: volume,
            pixel_spacing: spacing_ok.then_some(spacing),
        },
        meta,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A NIfTI-1 file: int16 voxels `v`, scaling, sform with the given i and j axes.
    fn nifti1(
        v: &Array3<i16>,
        slope: f32,
        inter: f32,
        big: bool,
        ras_i: f32,
        ras_j: f32,
    ) -> Vec<u8> {
        let (s, r, c) = v.dim();
        let mut h = vec![0u8; 352];
        let put16 = |h: &mut Vec<u8>, at: usize, x: i16| {
            let b = if big {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            h[at..at + 2].copy_from_slice(&b);
        };
        let put32 = |h: &mut Vec<u8>, at: usize, x: [u8; 4]| {
            let mut b = x;
            if big {
                b.reverse();
            }
            h[at..at + 4].copy_from_slice(&b);
        };
        put32(&mut h, 0, 348i32.to_le_bytes());
        for (k, d) in [3i16, c as i16, r as i16, s as i16, 1, 1, 1, 1]
            .iter()
            .enumerate()
        {
            put16(&mut h, 40 + 2 * k, *d);
        }
        put16(&mut h, 70, 4);
        put16(&mut h, 72, 16);
        for (k, p) in [1.0f32, 0.5, 0.75, 2.0].iter().enumerate() {
            put32(&mut h, 76 + 4 * k, p.to_le_bytes());
        }
        put32(&mut h, 108, 352f32.to_le_bytes());
        put32(&mut h, 112, slope.to_le_bytes());
        put32(&mut h, 116, inter.to_le_bytes());
        put16(&mut h, 254, 1);
        let srow = [
            [ras_i, 0.0, 0.0, 0.0],
            [0.0, ras_j, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ];
        for (rr, row) in srow.iter().enumerate() {
            for (cc, x) in row.iter().enumerate() {
                put32(&mut h, 280 + 16 * rr + 4 * cc, x.to_le_bytes());
            }
        }
        h[344..348].copy_from_slice(b"n+1\0");
        for x in v.iter() {
            h.extend_from_slice(&if big {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            });
        }
        h
    }

    fn vol() -> Array3<i16> {
        Array3::from_shape_fn((2, 3, 4), |(s, r, c)| (s * 100 + r * 10 + c) as i16)
    }

    #[test]
    fn reads_both_byte_orders_plain_and_gzipped_with_scaling() {
        for big in [false, true] {
            let bytes = nifti1(&vol(), 1.0, -1024.0, big, 0.5, -0.75);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            let gz = gz.finish().unwrap();
            for data in [&bytes, &gz] {
                let (v, m) = parse_nifti(&data[..], MAX_VOXEL_BYTES).unwrap();
                // sform: i toward -x LPS... i = +0.5 RAS x -> -x LPS: columns flipped;
                // j = -0.75 RAS y -> +y LPS: rows kept.
                assert!(m.reoriented.flipped_cols && !m.reoriented.flipped_rows);
                assert_eq!(m.shape, [2, 3, 4]);
                assert_eq!(m.scaling, Some((1.0, -1024.0)));
                assert_eq!(v.pixel_spacing, Some([0.75, 0.5]));
                for ((s, r, c), &x) in vol().indexed_iter() {
                    assert_eq!(v.hu[[s, r, 3 - c]], f32::from(x) - 1024.0);
                }
            }
        }
    }

    /// A corruption of a good header and the words its error must contain.
    type Corruption = (Box<dyn Fn(&mut Vec<u8>)>, &'static str);

    #[test]
    fn bad_headers_are_errors() {
        let good = nifti1(&vol(), 0.0, 0.0, false, -1.0, 1.0);
        parse_nifti(&good[..], MAX_VOXEL_BYTES).unwrap();
        let cases: Vec<Corruption> = vec![
            (
                Box::new(|b| b.truncate(300)),
                "shorter than a NIfTI-1 header",
            ),
            (Box::new(|b| b.truncate(390)), "truncated"),
            (Box::new(|b| b[0] = 0), "not a NIfTI file"),
            (
                Box::new(|b| b[344..348].copy_from_slice(b"ni1\0")),
                "header/image pair",
            ),
            (
                Box::new(|b| b[70..72].copy_from_slice(&32i16.to_le_bytes())),
                "datatype 32",
            ),
            (
                Box::new(|b| b[72..74].copy_from_slice(&8i16.to_le_bytes())),
                "bitpix 8",
            ),
            (
                Box::new(|b| {
                    b[40..42].copy_from_slice(&4i16.to_le_bytes());
                    b[48..50].copy_from_slice(&5i16.to_le_bytes());
                }),
                "more than one volume",
            ),
            (
                Box::new(|b| b[42..44].copy_from_slice(&(-3i16).to_le_bytes())),
                "dim[1] is -3",
            ),
            (
                Box::new(|b| b[108..112].copy_from_slice(&100f32.to_le_bytes())),
                "vox_offset 100",
            ),
            (
                Box::new(|b| b[108..112].copy_from_slice(&1e9f32.to_le_bytes())),
                "implausibly",
            ),
            (
                Box::new(|b| {
                    for k in 1..4 {
                        b[40 + 2 * k..42 + 2 * k].copy_from_slice(&i16::MAX.to_le_bytes());
                    }
                }),
                "more than the limit",
            ),
        ];
        for (mutate, want) in cases {
            let mut b = good.clone();
            mutate(&mut b);
            let e = parse_nifti(&b[..], MAX_VOXEL_BYTES)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(parse_nifti(&good[..n], MAX_VOXEL_BYTES).is_err(), "{n}");
        }
    }
}
