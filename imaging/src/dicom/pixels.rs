//! Pixel data to stored values to HU, frame by frame.
//!
//! Native pixel data is read directly from the element (little or big endian, 8 / 16 /
//! 32 bits allocated), RLE by [`super::rle`], encapsulated uncompressed frames as they
//! are and deflated image frames by inflating each under the size the header declares
//! (Rows x Columns x BitsAllocated: a deflate bomb is refused after that many bytes, not
//! inflated). JPEG and JPEG 2000 go through dicom-pixeldata's codecs (jpeg-decoder,
//! OpenJPEG), each call under `catch_unwind`, after the codestream header's
//! size is checked against the data set's; a frame whose header cannot be found is
//! refused (nothing would bound what it decodes to). Frames are decoded in parallel.
//!
//! Stored values follow pydicom 3 (`pixels/decoders/base.py`):
//! - native, deflated, RLE and JPEG data: bits above BitsStored are discarded, and the value
//!   sign-extended from bit BitsStored-1 when PixelRepresentation is 1;
//! - JPEG 2000: samples are taken as decoded, unless the codestream's signedness (SIZ
//!   marker) disagrees with PixelRepresentation, in which case the sample is
//!   re-interpreted at the codestream's precision (pydicom's `apply_j2k_sign_correction`;
//!   e.g. `J2K_pixelrep_mismatch.dcm`: PixelRepresentation 1 with an unsigned 13-bit
//!   codestream, so 6192 becomes -2000).

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::value::{DicomValueType, PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use ndarray::Array2;
use rayon::prelude::*;

use super::fragments::{frame_data, frame_head, Header};
use super::parse::{describe, panic_message};
use super::Rescale;
use crate::error::{ImagingError, Result};

/// How a transfer syntax stores pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Native {
        big_endian: bool,
    },
    Jpeg,
    Jpeg2000,
    /// RLE Lossless, decoded by [`super::rle`].
    Rle,
    /// Encapsulated Uncompressed Explicit VR Little Endian: each frame's fragments hold
    /// its little-endian samples as they are.
    EncapsulatedRaw,
    /// Deflated Image Frame Compression: each frame's fragments hold its little-endian
    /// samples, deflated (RFC 1951, no zlib header).
    DeflatedFrames,
}

/// The transfer syntaxes the reader decodes, each with its pixel codec: the one list
/// behind [`Codec::of`] and [`supported_transfer_syntaxes`].
const CODECS: &[(&str, Codec)] = &[
    ("1.2.840.10008.1.2", Codec::Native { big_endian: false }),
    ("1.2.840.10008.1.2.1", Codec::Native { big_endian: false }),
    (
        "1.2.840.10008.1.2.1.99",
        Codec::Native { big_endian: false },
    ),
    ("1.2.840.10008.1.2.2", Codec::Native { big_endian: true }),
    ("1.2.840.10008.1.2.4.50", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.51", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.57", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.70", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.90", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.91", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.92", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.93", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.201", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.202", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.203", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.5", Codec::Rle),
    ("1.2.840.10008.1.2.1.98", Codec::EncapsulatedRaw),
    ("1.2.840.10008.1.2.8.1", Codec::DeflatedFrames),
];

/// Every transfer syntax the reader decodes (what a DICOM receiver may accept).
pub fn supported_transfer_syntaxes() -> impl Iterator<Item = &'static str> {
    CODECS.iter().map(|(ts, _)| *ts)
}

impl Codec {
    /// The codec of a transfer syntax, or None when it is not supported.
    pub(crate) fn of(ts: &str) -> Option<Codec> {
        CODECS.iter().find(|(t, _)| *t == ts).map(|(_, c)| *c)
    }

    /// Whether frames are decoded by dicom-pixeldata (which reads the pixel module
    /// attributes, so the object is normalised first).
    pub(crate) fn uses_pixeldata(self) -> bool {
        matches!(self, Codec::Jpeg | Codec::Jpeg2000)
    }
}

/// The pixel module attributes that matter for decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PixelFormat {
    pub rows: usize,
    pub cols: usize,
    pub frames: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
}

impl PixelFormat {
    fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }

    fn frame_bytes(&self) -> usize {
        self.rows * self.cols * self.bytes_per_sample()
    }

    /// Interprets a raw `bits_allocated`-bit word as a stored value with `bits`
    /// significant bits (masked, or sign-extended when signed).
    fn value(&self, raw: u32, bits: u16) -> i64 {
        let shift = 32 - u32::from(bits.clamp(1, 32));
        if self.signed {
            i64::from(((raw << shift) as i32) >> shift)
        } else {
            i64::from((raw << shift) >> shift)
        }
    }
}

/// Decodes every frame to HU (`stored * slope + intercept` in f64, then f32).
pub(crate) fn decode_frames(
    obj: &DefaultDicomObject,
    fmt: &PixelFormat,
    codec: Codec,
    rescale: &[Rescale],
) -> Result<Vec<Array2<f32>>> {
    let value = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| ImagingError::NotAnImage("no Pixel Data".into()))?
        .value();
    match (codec, value) {
        (Codec::Native { big_endian }, Value::Primitive(p)) => {
            let data = native_le_bytes(p, fmt, big_endian)?;
            let need = fmt.frame_bytes() * fmt.frames;
            if data.len() < need {
                return Err(ImagingError::DicomCorrupt(format!(
                    "Pixel Data holds {} bytes but {} frame(s) of {}x{} at {} bits need {need}: \
                     the file is truncated",
                    data.len(),
                    fmt.frames,
                    fmt.rows,
                    fmt.cols,
                    fmt.bits_allocated
                )));
            }
            let fb = fmt.frame_bytes();
            Ok((0..fmt.frames)
                .into_par_iter()
                .map(|f| {
                    let frame = &data[f * fb..(f + 1) * fb];
                    to_hu(
                        frame,
                        fmt,
                        fmt.bits_stored,
                        fmt.bytes_per_sample(),
                        rescale[f],
                    )
                })
                .collect())
        }
        (Codec::Native { .. }, _) => Err(ImagingError::DicomCorrupt(
            "Pixel Data is encapsulated but the transfer syntax is native".into(),
        )),
        (_, Value::PixelSequence(seq)) => {
            let fragments: Vec<&[u8]> = seq.fragments().iter().map(|f| f.as_slice()).collect();
            let table = seq.offset_table();
            (0..fmt.frames)
                .into_par_iter()
                .map(|f| {
                    match codec {
                        Codec::Rle => return decode_rle(&fragments, table, fmt, f, rescale[f]),
                        Codec::EncapsulatedRaw | Codec::DeflatedFrames => {
                            return decode_raw_frame(&fragments, table, fmt, codec, f, rescale[f])
                        }
                        _ => {}
                    }
                    let head = frame_head(&fragments, table, fmt.frames, f, codec);
                    decode_encapsulated(obj, fmt, codec, f, head, rescale[f])
                })
                .collect()
        }
        (_, _) => Err(ImagingError::DicomCorrupt(
            "the transfer syntax is encapsulated but Pixel Data is not".into(),
        )),
    }
}

/// Native pixel data as little-endian sample bytes.
///
/// dicom-rs reads OW values as native u16 words (swapping big-endian files), OB as bytes.
/// This assumes a little-endian host, as every supported target is.
fn native_le_bytes<'a>(
    p: &'a PrimitiveValue,
    fmt: &PixelFormat,
    be: bool,
) -> Result<Cow<'a, [u8]>> {
    let ba = fmt.bits_allocated;
    let bytes = match p {
        PrimitiveValue::U8(_) if be && ba > 8 => {
            let mut v = p.to_bytes().into_owned();
            for s in v.chunks_exact_mut(usize::from(ba / 8)) {
                s.reverse();
            }
            Cow::Owned(v)
        }
        // 32-bit samples read as 16-bit words: swap the word pairs of a big-endian file.
        PrimitiveValue::U16(_) | PrimitiveValue::I16(_) if be && ba == 32 => {
            let mut v = p.to_bytes().into_owned();
            for s in v.chunks_exact_mut(4) {
                s.rotate_left(2);
            }
            Cow::Owned(v)
        }
        PrimitiveValue::U8(_)
        | PrimitiveValue::U16(_)
        | PrimitiveValue::I16(_)
        | PrimitiveValue::U32(_)
        | PrimitiveValue::I32(_) => p.to_bytes(),
        PrimitiveValue::Empty => Cow::Borrowed(&[][..]),
        other => {
            return Err(ImagingError::DicomCorrupt(format!(
                "Pixel Data has an unexpected value type {:?}",
                other.value_type()
            )))
        }
    };
    Ok(bytes)
}

/// One frame of little-endian samples of `bps` bytes to HU, keeping `bits` bits of each.
fn to_hu(data: &[u8], fmt: &PixelFormat, bits: u16, bps: usize, r: Rescale) -> Array2<f32> {
    let hu = |raw: u32| (fmt.value(raw, bits) as f64 * r.slope + r.intercept) as f32;
    let n = fmt.rows * fmt.cols;
    let v: Vec<f32> = match bps {
        1 => data[..n].iter().map(|&b| hu(u32::from(b))).collect(),
        2 => data[..2 * n]
            .chunks_exact(2)
            .map(|c| hu(u32::from(u16::from_le_bytes([c[0], c[1]]))))
            .collect(),
        _ => data[..4 * n]
            .chunks_exact(4)
            .map(|c| hu(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    Array2::from_shape_vec((fmt.rows, fmt.cols), v).expect("rows * cols samples")
}

/// The bytes of frame `f` among the fragments ([`frame_data`]), or a decode error.
fn frame_of<'a>(
    fragments: &[&'a [u8]],
    table: &[u32],
    fmt: &PixelFormat,
    f: usize,
) -> Result<Cow<'a, [u8]>> {
    frame_data(fragments, table, fmt.frames, f).ok_or_else(|| {
        ImagingError::DicomDecode(format!(
            "frame {f}: cannot tell which of the {} fragments hold it",
            fragments.len()
        ))
    })
}

fn decode_rle(
    fragments: &[&[u8]],
    table: &[u32],
    fmt: &PixelFormat,
    f: usize,
    r: Rescale,
) -> Result<Array2<f32>> {
    let data = frame_of(fragments, table, fmt, f)?;
    let bps = fmt.bytes_per_sample();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        super::rle::decode_frame(&data, fmt.rows * fmt.cols, bps)
    }))
    .map_err(|p| {
        ImagingError::DicomDecode(format!(
            "frame {f}: the RLE decoder panicked: {}",
            panic_message(&*p)
        ))
    })?
    .map_err(|e| match e {
        ImagingError::DicomDecode(m) => ImagingError::DicomDecode(format!("frame {f}: {m}")),
        other => other,
    })?;
    Ok(to_hu(&decoded, fmt, fmt.bits_stored, bps, r))
}

/// One frame of encapsulated uncompressed or deflated samples to HU.
fn decode_raw_frame(
    fragments: &[&[u8]],
    table: &[u32],
    fmt: &PixelFormat,
    codec: Codec,
    f: usize,
    r: Rescale,
) -> Result<Array2<f32>> {
    let data = frame_of(fragments, table, fmt, f)?;
    let need = fmt.frame_bytes();
    let samples = if codec == Codec::DeflatedFrames {
        Cow::Owned(inflate_frame(&data, need, f)?)
    } else {
        data
    };
    if samples.len() < need {
        return Err(ImagingError::DicomDecode(format!(
            "frame {f}: {} bytes of samples, but {}x{} at {} bits need {need}",
            samples.len(),
            fmt.rows,
            fmt.cols,
            fmt.bits_allocated
        )));
    }
    Ok(to_hu(
        &samples,
        fmt,
        fmt.bits_stored,
        fmt.bytes_per_sample(),
        r,
    ))
}

/// Inflates one deflated frame, reading at most one byte more than the `need` bytes the
/// header declares: a frame that inflates to more is refused (a deflate bomb guard), so
/// memory and time stay bounded by the declared size whatever the stream holds.
fn inflate_frame(data: &[u8], need: usize, f: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(need.min(data.len().saturating_mul(16)));
    flate2::read::DeflateDecoder::new(data)
        .take(need as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImagingError::DicomDecode(format!("frame {f}: cannot inflate: {e}")))?;
    if out.len() > need {
        return Err(ImagingError::DicomUnsupported(format!(
            "frame {f} inflates to more than the {need} bytes Rows x Columns x BitsAllocated \
             declare: refused unread (a deflate bomb guard)"
        )));
    }
    Ok(out)
}

fn decode_encapsulated(
    obj: &DefaultDicomObject,
    fmt: &PixelFormat,
    codec: Codec,
    frame: usize,
    head: Option<Header>,
    r: Rescale,
) -> Result<Array2<f32>> {
    let Some(h) = head else {
        // The decoder would allocate whatever the codestream declares: without its
        // header there is nothing to check that against.
        let (name, marker) = if codec == Codec::Jpeg {
            ("JPEG", "SOF")
        } else {
            ("JPEG 2000", "SIZ")
        };
        return Err(ImagingError::DicomUnsupported(format!(
            "frame {frame}: no {name} codestream header ({marker}) at the start of the frame, \
             so its size cannot be checked against Rows x Columns before decoding"
        )));
    };
    if (h.width, h.height) != (fmt.cols, fmt.rows) || h.components != 1 {
        return Err(ImagingError::DicomDecode(format!(
            "frame {frame}: the codestream holds {}x{} pixels with {} component(s), but \
             Rows x Columns is {}x{} with 1 sample per pixel",
            h.height, h.width, h.components, fmt.rows, fmt.cols
        )));
    }
    if codec == Codec::Jpeg && h.lossy_jpeg && h.precision > 8 {
        return Err(ImagingError::DicomUnsupported(format!(
            "{}-bit lossy JPEG (extended process 2/4) is not supported by the JPEG decoder",
            h.precision
        )));
    }
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        obj.decode_pixel_data_frame(frame as u32)
            .map(|d| d.into_data())
    }))
    .map_err(|p| {
        ImagingError::DicomDecode(format!(
            "frame {frame}: the decoder panicked: {}",
            panic_message(&*p)
        ))
    })?
    .map_err(|e| ImagingError::DicomDecode(format!("frame {frame}: {}", describe(&e))))?;

    // jpeg-decoder yields one byte per sample for an 8-bit JPEG in 16 allocated bits.
    let narrow = codec == Codec::Jpeg && fmt.bits_allocated == 16 && h.precision <= 8;
    let bps = if narrow { 1 } else { fmt.bytes_per_sample() };
    let need = fmt.rows * fmt.cols * bps;
    if decoded.len() < need {
        return Err(ImagingError::DicomDecode(format!(
            "frame {frame}: the decoder returned {} bytes, expected {need}",
            decoded.len()
        )));
    }
    let bits = match (codec, head) {
        // pydicom: no unused-bit correction for JPEG 2000, only the sign correction.
        (Codec::Jpeg2000, Some(h))
            if h.signed != fmt.signed && h.precision < fmt.bits_allocated =>
        {
            h.precision
        }
        (Codec::Jpeg2000, _) => fmt.bits_allocated,
        _ => fmt.bits_stored,
    };
    Ok(to_hu(&decoded, fmt, bits, bps, r))
}

#[cfg(test)]
mod supported_tests {
    use super::*;

    #[test]
    fn the_supported_list_is_exactly_what_the_codecs_decode() {
        let supported: Vec<&str> = supported_transfer_syntaxes().collect();
        for ts in &supported {
            assert!(Codec::of(ts).is_some(), "{ts}");
        }
        // Every UID the codec table knows is listed (the UIDs of PS3.5 annex A in
        // 1.2.840.10008.1.2[.x[.y]]).
        let mut known = std::collections::HashSet::new();
        for a in 0..10u32 {
            for b in 0..300u32 {
                for ts in [
                    format!("1.2.840.10008.1.2.{a}.{b}"),
                    format!("1.2.840.10008.1.2.{a}"),
                ] {
                    if Codec::of(&ts).is_some() {
                        assert!(supported.contains(&ts.as_str()), "{ts}");
                        known.insert(ts);
                    }
                }
            }
        }
        // All but the base UID (1.2.840.10008.1.2, implicit VR little endian) have that form.
        assert_eq!(known.len(), supported.len() - 1);
    }
}
