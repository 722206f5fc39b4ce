//! Fixed-size numeric samples: the element types of `.npy`, raw, NIfTI and NRRD data,
//! decoded to float32 in one place.
//!
//! Every reader that takes a block of samples from a file or an upload checks the
//! byte count with [`byte_len`] (checked arithmetic, never an allocation sized from an
//! unchecked header) and decodes it with [`decode`].

use crate::error::{ImagingError, Result};

/// Byte order of multi-byte samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endian {
    #[default]
    Little,
    Big,
}

/// Element type of a block of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl SampleType {
    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            SampleType::I8 | SampleType::U8 => 1,
            SampleType::I16 | SampleType::U16 => 2,
            SampleType::I32 | SampleType::U32 | SampleType::F32 => 4,
            SampleType::I64 | SampleType::U64 | SampleType::F64 => 8,
        }
    }

    /// numpy's name of the type (`int16`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SampleType::I8 => "int8",
            SampleType::U8 => "uint8",
            SampleType::I16 => "int16",
            SampleType::U16 => "uint16",
            SampleType::I32 => "int32",
            SampleType::U32 => "uint32",
            SampleType::I64 => "int64",
            SampleType::U64 => "uint64",
            SampleType::F32 => "float32",
            SampleType::F64 => "float64",
        }
    }
}

/// Bytes needed for `shape` samples of `ty`, or an error naming the shape when the
/// product overflows or exceeds `limit` bytes.
pub fn byte_len(shape: &[usize], ty: SampleType, limit: usize) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(ty.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ImagingError::Invalid(format!("shape {shape:?} is too large")))?;
    if n > limit {
        return Err(ImagingError::Invalid(format!(
            "shape {shape:?} of {} needs {n} bytes, more than the limit of {limit}",
            ty.name()
        )));
    }
    Ok(n)
}

/// Decodes `bytes` as samples of `ty` in `endian` order, to float32 (64-bit integers and
/// float64 are rounded to the nearest float32). Trailing bytes that do not make a whole
/// sample are ignored; callers check the length first.
pub fn decode(bytes: &[u8], ty: SampleType, endian: Endian) -> Vec<f32> {
    let le = endian == Endian::Little;
    macro_rules! each {
        ($n:literal, $t:ty) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    (if le {
                        <$t>::from_le_bytes(b)
                    } else {
                        <$t>::from_be_bytes(b)
                    }) as f32
                })
                .collect()
        };
    }
    match ty {
        SampleType::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        SampleType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        SampleType::I16 => each!(2, i16),
        SampleType::U16 => each!(2, u16),
        SampleType::I32 => each!(4, i32),
        SampleType::U32 => each!(4, u32),
        SampleType::I64 => each!(8, i64),
        SampleType::U64 => each!(8, u64),
        SampleType::F32 => each!(4, f32),
        SampleType::F64 => each!(8, f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_type_in_both_orders() {
        let cases: [(SampleType, Vec<u8>, Vec<u8>, f32); 10] = [
            (SampleType::I8, vec![0xfe], vec![0xfe], -2.0),
            (SampleType::U8, vec![0xfe], vec![0xfe], 254.0),
            (
                SampleType::I16,
                (-1000i16).to_le_bytes().to_vec(),
                (-1000i16).to_be_bytes().to_vec(),
                -1000.0,
            ),
            (
                SampleType::U16,
                4095u16.to_le_bytes().to_vec(),
                4095u16.to_be_bytes().to_vec(),
                4095.0,
            ),
            (
                SampleType::I32,
                (-70000i32).to_le_bytes().to_vec(),
                (-70000i32).to_be_bytes().to_vec(),
                -70000.0,
            ),
            (
                SampleType::U32,
                70000u32.to_le_bytes().to_vec(),
                70000u32.to_be_bytes().to_vec(),
                70000.0,
            ),
            (
                SampleType::I64,
                (-3i64).to_le_bytes().to_vec(),
                (-3i64).to_be_bytes().to_vec(),
                -3.0,
            ),
            (
                SampleType::U64,
                5u64.to_le_bytes().to_vec(),
                5u64.to_be_bytes().to_vec(),
                5.0,
            ),
            (
                SampleType::F32,
                1.5f32.to_le_bytes().to_vec(),
                1.5f32.to_be_bytes().to_vec(),
                1.5,
            ),
            (
                SampleType::F64,
                (-2.25f64).to_le_bytes().to_vec(),
                (-2.25f64).to_be_bytes().to_vec(),
                -2.25,
            ),
        ];
        for (ty, le, be, want) in cases {
            assert_eq!(le.len(), ty.size(), "{}", ty.name());
            assert_eq!(decode(&le, ty, Endian::Little), vec![want], "{}", ty.name());
            assert_eq!(decode(&be, ty, Endian::Big), vec![want], "{}", ty.name());
        }
    }

    #[test]
    fn byte_len_is_checked() {
        assert_eq!(byte_len(&[2, 3], SampleType::I16, 100).unwrap(), 12);
        let e = byte_len(&[usize::MAX, 2], SampleType::I16, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let e = byte_len(&[10, 10], SampleType::F64, 799).unwrap_err();
        assert!(e.to_string().contains("800 bytes"), "{e}");
    }
}
