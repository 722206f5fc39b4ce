//! Encapsulated pixel data: which fragments hold a frame, and what the frame's JPEG /
//! JPEG 2000 codestream header says (size, components, precision, signedness), read
//! without decoding so that a mismatch with the data set is refused before the codec runs.

use std::borrow::Cow;

use super::pixels::Codec;

/// The encoded bytes of frame `f`: its fragment when there is one per frame, else the
/// fragments the basic offset table assigns to it (all of them for a single frame).
pub(crate) fn frame_data<'a>(
    fragments: &[&'a [u8]],
    table: &[u32],
    frames: usize,
    f: usize,
) -> Option<Cow<'a, [u8]>> {
    if fragments.len() == frames {
        return fragments.get(f).map(|b| Cow::Borrowed(*b));
    }
    if frames == 1 {
        return Some(Cow::Owned(fragments.concat()));
    }
    let (start, end) = (
        u64::from(*table.get(f)?),
        table.get(f + 1).map(|&e| u64::from(e)),
    );
    let mut offset = 0u64;
    let mut out = Vec::new();
    for frag in fragments {
        if offset >= start && end.is_none_or(|e| offset < e) {
            out.extend_from_slice(frag);
        }
        offset += 8 + frag.len() as u64;
    }
    (!out.is_empty()).then_some(Cow::Owned(out))
}

/// What the codestream header of a frame says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) components: usize,
    pub(crate) precision: u16,
    pub(crate) signed: bool,
    /// DCT-based JPEG (not lossless).
    pub(crate) lossy_jpeg: bool,
}

/// The first bytes of frame `f`'s codestream, parsed, when they can be found.
pub(crate) fn frame_head(
    fragments: &[&[u8]],
    table: &[u32],
    frames: usize,
    f: usize,
    codec: Codec,
) -> Option<Header> {
    let parse = |b: &[u8]| match codec {
        Codec::Jpeg => jpeg_header(b),
        Codec::Jpeg2000 => j2k_header(b),
        _ => None,
    };
    if codec != Codec::Jpeg && codec != Codec::Jpeg2000 {
        return None;
    }
    if fragments.len() == frames || frames == 1 {
        return fragments.get(f).and_then(|b| parse(b));
    }
    // Several fragments per frame: follow the basic offset table ...
    if let Some(&want) = table.get(f) {
        let mut offset = 0u64;
        for frag in fragments {
            if offset == u64::from(want) {
                return parse(frag);
            }
            offset += 8 + frag.len() as u64;
        }
        return None;
    }
    // ... or count the fragments that start a codestream.
    fragments.iter().filter_map(|b| parse(b)).nth(f)
}

/// SOF of a JPEG codestream (ISO 10918-1 B.2.2).
fn jpeg_header(b: &[u8]) -> Option<Header> {
    if b.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut pos = 2;
    while pos + 4 <= b.len() {
        if b[pos] != 0xFF {
            return None;
        }
        let marker = b[pos + 1];
        match marker {
            0xFF => pos += 1, // fill byte
            0x01 | 0xD0..=0xD7 => pos += 2,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let s = b.get(pos + 4..pos + 10)?;
                return Some(Header {
                    precision: u16::from(s[0]),
                    height: usize::from(u16::from_be_bytes([s[1], s[2]])),
                    width: usize::from(u16::from_be_bytes([s[3], s[4]])),
                    components: usize::from(s[5]),
                    signed: false,
                    lossy_jpeg: !matches!(marker, 0xC3 | 0xC7 | 0xCB | 0xCF),
                });
            }
            0xDA | 0xD9 => return None,
            _ => pos += 2 + usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]])),
        }
    }
    None
}

/// SIZ of a JPEG 2000 codestream (ISO 15444-1 A.5.1), optionally inside a JP2 file.
fn j2k_header(b: &[u8]) -> Option<Header> {
    let mut off = 0usize;
    if b.starts_with(&[0, 0, 0, 0x0C, 0x6A, 0x50, 0x20, 0x20]) {
        off = 12;
        loop {
            let len = u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?) as usize;
            if b.get(off + 4..off + 8)? == b"jp2c" {
                off += 8;
                break;
            }
            if len < 8 {
                return None;
            }
            off = off.checked_add(len)?;
        }
    }
    let s = b.get(off..off + 45)?;
    if s[..4] != [0xFF, 0x4F, 0xFF, 0x51] {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]) as usize;
    let ssiz = s[42];
    Some(Header {
        width: u32_at(8).checked_sub(u32_at(16))?,
        height: u32_at(12).checked_sub(u32_at(20))?,
        components: usize::from(u16::from_be_bytes([s[40], s[41]])),
        precision: u16::from(ssiz & 0x7F) + 1,
        signed: ssiz & 0x80 != 0,
        lossy_jpeg: false,
    })
}
