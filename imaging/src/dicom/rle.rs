//! RLE Lossless (DICOM PS3.5 Annex G), decoded here rather than by dicom-rs: its adapter
//! panics on malformed segments and refuses 32-bit samples, while pydicom accepts both.
//!
//! A frame is one fragment: a 64-byte header (number of segments, then up to 15 segment
//! offsets, little endian) and, for single-channel images, one PackBits segment per byte
//! of the sample, most significant byte first. Output: little-endian samples.

use crate::error::{ImagingError, Result};

/// Decodes one RLE frame of `pixels` samples of `bytes_per_sample` bytes each.
pub(crate) fn decode_frame(data: &[u8], pixels: usize, bytes_per_sample: usize) -> Result<Vec<u8>> {
    let err = |m: String| ImagingError::DicomDecode(format!("RLE: {m}"));
    let header = data.get(..64).ok_or_else(|| {
        err(format!(
            "the frame has {} bytes, less than its header",
            data.len()
        ))
    })?;
    let word = |i: usize| {
        u32::from_le_bytes([
            header[4 * i],
            header[4 * i + 1],
            header[4 * i + 2],
            header[4 * i + 3],
        ]) as usize
    };
    let segments = word(0);
    if segments != bytes_per_sample {
        return Err(err(format!(
            "{segments} segments for {bytes_per_sample}-byte single-channel samples"
        )));
    }
    let mut parts = Vec::with_capacity(segments);
    for s in 0..segments {
        let start = word(s + 1);
        let end = if s + 1 < segments {
            word(s + 2)
        } else {
            data.len()
        };
        let segment = data
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| err(format!("segment {s} offsets {start}..{end} are invalid")))?;
        // PackBits expands at most 64-fold (2 bytes -> 128): refuse before allocating.
        if pixels > 64 * segment.len() {
            return Err(err(format!(
                "segment {s} has {} bytes, too few for {pixels} pixels",
                segment.len()
            )));
        }
        parts.push(segment);
    }
    let mut out = vec![0u8; pixels * bytes_per_sample];
    for (s, segment) in parts.into_iter().enumerate() {
        // Segment s holds byte (bytes_per_sample - 1 - s) of each little-endian sample.
        let byte = bytes_per_sample - 1 - s;
        let n = unpack(segment, pixels, |i, v| out[i * bytes_per_sample + byte] = v);
        if n < pixels {
            return Err(err(format!(
                "segment {s} decodes to {n} bytes, expected {pixels}"
            )));
        }
    }
    Ok(out)
}

/// PackBits: calls `put(i, byte)` for the first `limit` decoded bytes; returns how many
/// bytes were produced (at most `limit`; excess data is ignored).
fn unpack(src: &[u8], limit: usize, mut put: impl FnMut(usize, u8)) -> usize {
    let (mut i, mut n) = (0usize, 0usize);
    while i < src.len() && n < limit {
        let h = src[i] as i8;
        i += 1;
        if h >= 0 {
            let len = h as usize + 1;
            let run = &src[i..(i + len).min(src.len())];
            for &b in run.iter().take(limit - n) {
                put(n, b);
                n += 1;
            }
            i += len;
        } else if h != -128 {
            let Some(&b) = src.get(i) else { break };
            i += 1;
            for _ in 0..(1 - h as isize) as usize {
                if n == limit {
                    break;
                }
                put(n, b);
                n += 1;
            }
        }
    }
    n
}
