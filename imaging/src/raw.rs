//! Raw volumes: a headerless (or fixed-size-header) block of `slices x rows x cols`
//! samples, C order (column fastest), int16 / uint16 / float32, either byte order. The
//! values are taken as HU as they are. The file size must match exactly. Samples are
//! decoded by [`crate::sample`], shared with the `.npy`, NIfTI and NRRD readers.
//! (InVesalius `.inv3` projects, whose volume is a raw block inside a tar: [`crate::inv3`].)

use std::path::Path;

use ndarray::Array3;

use crate::error::{ImagingError, Result};
use crate::image::CtVolume;
pub use crate::sample::Endian;
use crate::sample::{self, SampleType};

/// Sample type of a raw volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RawDtype {
    /// Signed 16-bit (the usual CT storage).
    #[default]
    I16,
    U16,
    F32,
}

impl RawDtype {
    /// The sample type it decodes as.
    pub fn sample(self) -> SampleType {
        match self {
            RawDtype::I16 => SampleType::I16,
            RawDtype::U16 => SampleType::U16,
            RawDtype::F32 => SampleType::F32,
        }
    }

    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            RawDtype::I16 | RawDtype::U16 => 2,
            RawDtype::F32 => 4,
        }
    }

    /// numpy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            RawDtype::I16 => "int16",
            RawDtype::U16 => "uint16",
            RawDtype::F32 => "float32",
        }
    }

    /// From numpy's name (`int16`, `uint16`, `float32`; also `i2`, `u2`, `f4`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().trim_start_matches(['<', '=', '|']) {
            "int16" | "i2" | "short" => Ok(RawDtype::I16),
            "uint16" | "u2" | "ushort" => Ok(RawDtype::U16),
            "float32" | "f4" | "float" => Ok(RawDtype::F32),
            other => Err(ImagingError::Raw(format!(
                "unsupported sample type {other:?} (expected int16, uint16 or float32)"
            ))),
        }
    }
}

fn expected_bytes(shape: [usize; 3], dtype: RawDtype, header_bytes: usize) -> Result<usize> {
    if shape.contains(&0) {
        return Err(ImagingError::Raw(format!(
            "shape {shape:?} has a zero dimension"
        )));
    }
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header_bytes))
        .ok_or_else(|| ImagingError::Raw(format!("shape {shape:?} is too large")))
}

/// A raw volume from bytes: `header_bytes` skipped, then exactly
/// `slices * rows * cols * dtype.size()` bytes of samples in C order. `shape` is
/// `[slices, rows, cols]`. Too few or too many bytes is an error naming both sizes.
pub fn parse_raw_volume(
    bytes: &[u8],
    shape: [usize; 3],
    dtype: RawDtype,
    endian: Endian,
    header_bytes: usize,
) -> Result<CtVolume> {
    let expected = expected_bytes(shape, dtype, header_bytes)?;
    if bytes.len() != expected {
        let relation = if bytes.len() < expected {
            "shorter"
        } else {
            "longer"
        };
        return Err(ImagingError::Raw(format!(
            "data is {relation} than expected: {} bytes, but shape {shape:?} of {} with a \
             {header_bytes}-byte header needs {expected}",
            bytes.len(),
            dtype.name()
        )));
    }
    let data = &bytes[header_bytes..];
    let values = sample::decode(data, dtype.sample(), endian);
    let hu = Array3::from_shape_vec((shape[0], shape[1], shape[2]), values)
        .map_err(|e| ImagingError::Raw(e.to_string()))?;
    Ok(CtVolume {
        hu,
        pixel_spacing: None,
    })
}

/// Reads a raw volume file (see [`parse_raw_volume`]). The file size is checked before
/// reading.
pub fn read_raw_volume(
    path: &Path,
    shape: [usize; 3],
    dtype: RawDtype,
    endian: Endian,
    header_bytes: usize,
) -> Result<CtVolume> {
    let expected = expected_bytes(shape, dtype, header_bytes)?;
    let len = std::fs::metadata(path)
        .map_err(|e| ImagingError::io(path, e))?
        .len();
    if len != expected as u64 {
        let relation = if len < expected as u64 {
            "shorter"
        } else {
            "longer"
        };
        return Err(ImagingError::Raw(format!(
            "{} is {relation} than expected: {len} bytes, but shape {shape:?} of {} with a \
             {header_bytes}-byte header needs {expected}",
            path.display(),
            dtype.name()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    parse_raw_volume(&bytes, shape, dtype, endian, header_bytes)
}

/// Encodes a volume as raw samples (C order, no header). Values are rounded and clamped
/// to the integer types' ranges; NaN or infinity is an error.
pub fn encode_raw_volume(hu: &Array3<f32>, dtype: RawDtype, endian: Endian) -> Result<Vec<u8>> {
    let le = endian == Endian::Little;
    let mut out = Vec::with_capacity(hu.len() * dtype.size());
    for &v in hu.iter() {
        if !v.is_finite() {
            return Err(ImagingError::NonFinite);
        }
        match dtype {
            RawDtype::I16 => {
                let s = v.round().clamp(-32768.0, 32767.0) as i16;
                out.extend_from_slice(&if le { s.to_le_bytes() } else { s.to_be_bytes() });
            }
            RawDtype::U16 => {
                let s = v.round().clamp(0.0, 65535.0) as u16;
                out.extend_from_slice(&if le { s.to_le_bytes() } else { s.to_be_bytes() });
            }
            RawDtype::F32 => {
                out.extend_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
            }
        }
    }
    Ok(out)
}

/// Writes [`encode_raw_volume`] to `path`.
pub fn write_raw_volume(
    path: &Path,
    hu: &Array3<f32>,
    dtype: RawDtype,
    endian: Endian,
) -> Result<()> {
    let bytes = encode_raw_volume(hu, dtype, endian)?;
    std::fs::write(path, bytes).map_err(|e| ImagingError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Array3<f32> {
        Array3::from_shape_fn((3, 4, 5), |(s, r, c)| {
            (s as f32 * 1000.0 - 1024.0) + r as f32 * 10.0 + c as f32
        })
    }

    #[test]
    fn raw_round_trips_every_dtype_and_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample();
        for dtype in [RawDtype::I16, RawDtype::U16, RawDtype::F32] {
            for endian in [Endian::Little, Endian::Big] {
                let want = if dtype == RawDtype::U16 {
                    v.mapv(|x| x.max(0.0))
                } else {
                    v.clone()
                };
                let bytes = encode_raw_volume(&v, dtype, endian).unwrap();
                assert_eq!(bytes.len(), 60 * dtype.size());
                let got = parse_raw_volume(&bytes, [3, 4, 5], dtype, endian, 0).unwrap();
                assert_eq!(got.hu, want, "{dtype:?} {endian:?}");
                // With a header in a file.
                let path = dir.path().join(format!("{dtype:?}{endian:?}.raw"));
                let mut with_header = vec![0xAB; 17];
                with_header.extend_from_slice(&bytes);
                std::fs::write(&path, &with_header).unwrap();
                let got = read_raw_volume(&path, [3, 4, 5], dtype, endian, 17).unwrap();
                assert_eq!(got.hu, want);
                assert_eq!(got.pixel_spacing, None);
            }
        }
        // Known bytes: int16 -1024 little-endian is 00 FC; big-endian FC 00.
        let le =
            parse_raw_volume(&[0x00, 0xFC], [1, 1, 1], RawDtype::I16, Endian::Little, 0).unwrap();
        assert_eq!(le.hu[[0, 0, 0]], -1024.0);
        let be = parse_raw_volume(&[0xFC, 0x00], [1, 1, 1], RawDtype::I16, Endian::Big, 0).unwrap();
        assert_eq!(be.hu[[0, 0, 0]], -1024.0);
        let u =
            parse_raw_volume(&[0x00, 0xFC], [1, 1, 1], RawDtype::U16, Endian::Little, 0).unwrap();
        assert_eq!(u.hu[[0, 0, 0]], 64512.0);
        // The path helper writes the same bytes.
        let p = dir.path().join("w.raw");
        write_raw_volume(&p, &v, RawDtype::I16, Endian::Big).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            encode_raw_volume(&v, RawDtype::I16, Endian::Big).unwrap()
        );
        assert_eq!(RawDtype::default(), RawDtype::I16);
        assert_eq!(RawDtype::from_name("<i2").unwrap(), RawDtype::I16);
        assert!(RawDtype::from_name("float64").is_err());
    }

    #[test]
    fn size_errors_name_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.raw");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let msg = read_raw_volume(&path, [1, 5, 5], RawDtype::I16, Endian::Little, 0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("longer") && msg.contains("100 bytes") && msg.contains("needs 50"),
            "{msg}"
        );
        let msg = read_raw_volume(&path, [2, 5, 5], RawDtype::F32, Endian::Little, 4)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("shorter") && msg.contains("100 bytes") && msg.contains("needs 204"),
            "{msg}"
        );
        let msg = parse_raw_volume(&[0; 7], [1, 2, 2], RawDtype::I16, Endian::Little, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("7 bytes") && msg.contains("needs 8"), "{msg}");
        assert!(parse_raw_volume(&[], [0, 2, 2], RawDtype::I16, Endian::Little, 0).is_err());
        assert!(
            parse_raw_volume(&[], [usize::MAX, 2, 2], RawDtype::I16, Endian::Little, 0).is_err()
        );
        assert!(matches!(
            read_raw_volume(
                &dir.path().join("missing"),
                [1, 1, 1],
                RawDtype::I16,
                Endian::Little,
                0
            ),
            Err(ImagingError::Io { .. })
        ));
        let mut nan = Array3::<f32>::zeros((1, 1, 2));
        nan[[0, 0, 1]] = f32::NAN;
        assert!(encode_raw_volume(&nan, RawDtype::F32, Endian::Little).is_err());
    }
}
