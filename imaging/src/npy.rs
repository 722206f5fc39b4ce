//! NumPy `.npy` files (format versions 1.0, 2.0, 3.0).
//!
//! Reads float32, float64, int16 and uint16 arrays of either byte order, C or
//! Fortran order, into float32. Writes float32 (and int16) in C order,
//! little-endian, format 1.0. Parsing works on bytes so the server can take an
//! uploaded body without touching the disk.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayD, IxDyn};

use crate::error::{ImagingError, Result};
use crate::sample::{self, Endian, SampleType};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Headers larger than this are rejected (numpy itself caps them at 10 kB by default).
const MAX_HEADER: usize = 1 << 16;

/// Element type of a `.npy` file that ldct reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F64,
    I16,
    U16,
}

impl NpyDtype {
    /// The sample type it decodes as.
    pub fn sample(self) -> SampleType {
        match self {
            NpyDtype::F32 => SampleType::F32,
            NpyDtype::F64 => SampleType::F64,
            NpyDtype::I16 => SampleType::I16,
            NpyDtype::U16 => SampleType::U16,
        }
    }

    fn size(self) -> usize {
        self.sample().size()
    }

    /// numpy's name (`float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NpyDtype::F32 => "float32",
            NpyDtype::F64 => "float64",
            NpyDtype::I16 => "int16",
            NpyDtype::U16 => "uint16",
        }
    }
}

/// A decoded `.npy` array: values as float32 in C order, with the source dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyArray {
    /// As an n-dimensional array.
    pub fn into_dyn(self) -> Result<ArrayD<f32>> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data)
            .map_err(|e| ImagingError::Npy(e.to_string()))
    }

    /// A single slice: shape `[H, W]` or `[1, H, W]`.
    pub fn into_image(self) -> Result<Array2<f32>> {
        let (h, w) = match self.shape.as_slice() {
            [h, w] => (*h, *w),
            [1, h, w] => (*h, *w),
            _ => {
                return Err(ImagingError::Shape {
                    shape: self.shape,
                    expected: "a single slice: [H, W] or [1, H, W]".into(),
                })
            }
        };
        if h == 0 || w == 0 {
            return Err(ImagingError::Shape {
                shape: self.shape,
                expected: "a non-empty image".into(),
            });
        }
        Array2::from_shape_vec((h, w), self.data).map_err(|e| ImagingError::Npy(e.to_string()))
    }

    /// A stack of slices: `[N, H, W]` (a 2-D array is one slice).
    pub fn into_volume(self) -> Result<Array3<f32>> {
        let (n, h, w) = match self.shape.as_slice() {
            [h, w] => (1, *h, *w),
            [n, h, w] => (*n, *h, *w),
            _ => {
                return Err(ImagingError::Shape {
                    shape: self.shape,
                    expected: "[N, H, W] or [H, W]".into(),
                })
            }
        };
        Array3::from_shape_vec((n, h, w), self.data).map_err(|e| ImagingError::Npy(e.to_string()))
    }
}

/// What a `.npy` header declares: read before the data, so a caller can refuse a shape
/// without decoding (or allocating for) anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    little: bool,
    fortran: bool,
    data_start: usize,
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8]) -> Result<NpyArray> {
    let NpyHeader {
        dtype,
        shape,
        little,
        fortran,
        data_start,
    } = header(bytes)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ImagingError::Npy("shape overflows".into()))?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| ImagingError::Npy("shape overflows".into()))?;
    let payload = &bytes[data_start..];
    if payload.len() < nbytes {
        return Err(ImagingError::Npy(format!(
            "truncated data: shape {shape:?} {} needs {nbytes} bytes, found {}",
            dtype.name(),
            payload.len()
        )));
    }
    let payload = &payload[..nbytes];
    let endian = if little { Endian::Little } else { Endian::Big };
    let mut data = sample::decode(payload, dtype.sample(), endian);
    if fortran && shape.len() > 1 {
        // Fortran order: reinterpret with reversed axes, then transpose to C order.
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let a = ArrayD::from_shape_vec(IxDyn(&rev), data)
            .map_err(|e| ImagingError::Npy(e.to_string()))?;
        data = a
            .reversed_axes()
            .as_standard_layout()
            .iter()
            .copied()
            .collect();
    }
    Ok(NpyArray { dtype, shape, data })
}

/// Reads the header of `.npy` bytes (magic, version, dtype, order, shape) and nothing
/// else.
pub fn header(bytes: &[u8]) -> Result<NpyHeader> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(ImagingError::Npy(
            "missing \\x93NUMPY magic: not a .npy file".into(),
        ));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(ImagingError::Npy("truncated header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(ImagingError::Npy(format!("unsupported format version {v}"))),
    };
    if header_len > MAX_HEADER {
        return Err(ImagingError::Npy(format!(
            "header of {header_len} bytes is too large"
        )));
    }
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .ok_or_else(|| ImagingError::Npy("truncated header".into()))?;
    let header =
        std::str::from_utf8(header).map_err(|_| ImagingError::Npy("header is not text".into()))?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = match dict_value(header, "fortran_order")?.trim() {
        "False" => false,
        "True" => true,
        other => return Err(ImagingError::Npy(format!("bad fortran_order {other:?}"))),
    };
    let shape = parse_shape(dict_value(header, "shape")?)?;
    let (little, dtype) = parse_descr(descr)?;
    Ok(NpyHeader {
        dtype,
        shape,
        little,
        fortran,
        data_start,
    })
}

fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let needle_sq = format!("'{key}'");
    let needle_dq = format!("\"{key}\"");
    let pos = header
        .find(&needle_sq)
        .map(|p| p + needle_sq.len())
        .or_else(|| header.find(&needle_dq).map(|p| p + needle_dq.len()))
        .ok_or_else(|| ImagingError::Npy(format!("header has no {key:?}")))?;
    let rest = header[pos..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| ImagingError::Npy(format!("malformed header near {key:?}")))?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|p| p + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| ImagingError::Npy(format!("malformed header near {key:?}")))?;
    Ok(&rest[..end])
}

fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| ImagingError::Npy(format!("bad shape {s:?}")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| ImagingError::Npy(format!("bad shape {s:?}")))
        })
        .collect()
}

fn parse_descr(descr: &str) -> Result<(bool, NpyDtype)> {
    // Split after the first character (not byte: a multibyte one must not panic).
    let first = descr.chars().next().map_or(0, char::len_utf8);
    let (order, ty) = descr.split_at(first);
    let little = match order {
        "<" | "|" | "=" => true,
        ">" => false,
        _ => return Err(ImagingError::NpyDtype(descr.to_owned())),
    };
    let dtype = match ty {
        "f4" => NpyDtype::F32,
        "f8" => NpyDtype::F64,
        "i2" => NpyDtype::I16,
        "u2" => NpyDtype::U16,
        _ => return Err(ImagingError::NpyDtype(descr.to_owned())),
    };
    Ok((little, dtype))
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Pad with spaces so that magic + len + header + '\n' is a multiple of 64.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Encodes float32 data of the given C-order shape as `.npy` bytes.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header_bytes("<f4", shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Encodes int16 data of the given C-order shape as `.npy` bytes.
pub fn encode_i16(shape: &[usize], data: &[i16]) -> Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header_bytes("<i2", shape);
    out.reserve(data.len() * 2);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n == len {
        Ok(())
    } else {
        Err(ImagingError::Npy(format!(
            "shape {shape:?} holds {n} values, data has {len}"
        )))
    }
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    parse(&bytes).map_err(|e| match e {
        ImagingError::Npy(m) => ImagingError::Npy(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Reads a single-slice `.npy` file (`[H, W]` or `[1, H, W]`) as float32.
pub fn read_image(path: &Path) -> Result<Array2<f32>> {
    read(path)?.into_image()
}

/// Writes a 2-D float32 array.
pub fn write_image(path: &Path, image: &Array2<f32>) -> Result<()> {
    let (h, w) = image.dim();
    let data: Vec<f32> = image.iter().copied().collect();
    write_bytes(path, &encode_f32(&[h, w], &data)?)
}

/// Writes a 3-D float32 array.
pub fn write_volume(path: &Path, volume: &Array3<f32>) -> Result<()> {
    let (n, h, w) = volume.dim();
    let data: Vec<f32> = volume.iter().copied().collect();
    write_bytes(path, &encode_f32(&[n, h, w], &data)?)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| ImagingError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_with(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn f32_round_trip_and_alignment() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = encode_f32(&[3, 4], &data).unwrap();
        let header_end = bytes.len() - 48;
        assert_eq!(header_end % 64, 0, "data must start 64-byte aligned");
        let a = parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![3, 4]);
        assert_eq!(a.data, data);
        assert_eq!(a.into_image().unwrap()[[2, 3]], 2.5);
    }

    #[test]
    fn reads_every_supported_dtype_and_order() {
        let be: Vec<u8> = [1i16, -2, 300, -400]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let a = parse(&npy_with(">i2", false, "(2, 2)", &be)).unwrap();
        assert_eq!(a.data, vec![1.0, -2.0, 300.0, -400.0]);
        let u: Vec<u8> = [0u16, 65535].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            parse(&npy_with("<u2", false, "(1, 2)", &u)).unwrap().data,
            vec![0.0, 65535.0]
        );
        let f: Vec<u8> = [0.25f64, -1e3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy_with("<f8", false, "(2,)", &f)).unwrap().data,
            vec![0.25, -1000.0]
        );
        // Fortran order [[1,2,3],[4,5,6]] is stored column-major: 1 4 2 5 3 6.
        let fo: Vec<u8> = [1f32, 4., 2., 5., 3., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse(&npy_with("<f4", true, "(2, 3)", &fo)).unwrap();
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"hello world, not numpy").is_err());
        let ok = encode_f32(&[4, 4], &[0.0; 16]).unwrap();
        for cut in [5, 9, 20, ok.len() - 1] {
            assert!(parse(&ok[..cut]).is_err(), "cut at {cut}");
        }
        let e = parse(&npy_with("<i8", false, "(1,)", &[0; 8])).unwrap_err();
        assert!(e.to_string().contains("int16"), "{e}");
        let e = parse(&npy_with("<f4", false, "(2, 2, 2)", &[0; 32]))
            .unwrap()
            .into_image()
            .unwrap_err();
        assert!(e.to_string().contains("[H, W]"), "{e}");
        assert!(parse(&npy_with("<f4", false, "(99999999999, 99999999999)", &[])).is_err());
        assert!(parse(&npy_with("<f4", false, "(0, 3)", &[]))
            .unwrap()
            .into_image()
            .is_err());
    }
}
