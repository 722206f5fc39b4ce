//! The start of a DICOM stream: the file meta group after `DICM`, and the encoding of a
//! bare data set (no preamble, no meta group), guessed from its first element.

use super::scan::{has_long_length, is_vr};
use crate::error::{ImagingError, Result};

const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Syntax {
    pub const IMPLICIT_LE: Syntax = Syntax {
        explicit_vr: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: true,
    };

    /// The encoding of a transfer syntax's data set (after inflating a deflated one).
    pub fn of_transfer_syntax(uid: &str) -> Syntax {
        match uid {
            "1.2.840.10008.1.2" => Syntax::IMPLICIT_LE,
            "1.2.840.10008.1.2.2" => Syntax::EXPLICIT_BE,
            _ => Syntax::EXPLICIT_LE,
        }
    }

    /// The transfer syntax UID to assume for a bare data set in this encoding.
    pub fn transfer_syntax(self) -> &'static str {
        match (self.explicit_vr, self.big_endian) {
            (false, _) => "1.2.840.10008.1.2",
            (true, false) => "1.2.840.10008.1.2.1",
            (true, true) => "1.2.840.10008.1.2.2",
        }
    }

    pub(crate) fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    pub(crate) fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
}

/// The file meta group found after `DICM`.
#[derive(Debug, Default)]
pub struct MetaInfo {
    /// Offset of the first data set byte.
    pub end: usize,
    /// Transfer Syntax UID (0002,0010), when present.
    pub transfer_syntax: Option<String>,
    /// Media Storage SOP Class / Instance UID (0002,0002) / (0002,0003).
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// The group starts with a File Meta Information Group Length (0002,0000) that
    /// matches the elements found. dicom-rs trusts that value to find the data set, so
    /// when it is absent or wrong the meta group is rebuilt rather than handed over.
    pub group_length_ok: bool,
}

/// Reads the group-0002 elements that follow `DICM` at `start` (explicit VR little endian).
pub fn read_meta(bytes: &[u8], start: usize) -> Result<MetaInfo> {
    let mut pos = start + 4;
    let mut uids: [Option<String>; 3] = [None, None, None];
    let mut group_length = None;
    while bytes.len() >= pos + 8 && u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) == 0x0002 {
        let elem = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = &bytes[pos + 4..pos + 6];
        let (header, len) = if has_long_length(vr) {
            let b = bytes
                .get(pos + 8..pos + 12)
                .ok_or_else(|| meta_truncated(pos))?;
            (12, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        } else {
            (
                8,
                usize::from(u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]])),
            )
        };
        let value = bytes
            .get(pos + header..pos + header + len)
            .ok_or_else(|| meta_truncated(pos))?;
        let slot = match elem {
            0x0002 => Some(0),
            0x0003 => Some(1),
            0x0010 => Some(2),
            _ => None,
        };
        if elem == 0x0000 && pos == start + 4 && vr == b"UL" && len == 4 {
            group_length = Some((
                u32::from_le_bytes([value[0], value[1], value[2], value[3]]),
                pos + 12,
            ));
        }
        if let Some(i) = slot {
            let s = String::from_utf8_lossy(value);
            let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
            uids[i] = (!s.is_empty()).then(|| s.to_string());
        }
        pos += header + len;
    }
    if pos == start + 4 && bytes.len() < pos + 8 {
        return Err(meta_truncated(pos));
    }
    let [sop_class_uid, sop_instance_uid, transfer_syntax] = uids;
    Ok(MetaInfo {
        end: pos,
        transfer_syntax,
        sop_class_uid,
        sop_instance_uid,
        group_length_ok: group_length.is_some_and(|(v, after)| v as usize == pos - after),
    })
}

fn meta_truncated(pos: usize) -> ImagingError {
    ImagingError::DicomCorrupt(format!(
        "the file meta information is truncated (at byte {pos})"
    ))
}

/// Guesses the encoding of a bare data set (no preamble, no meta group) from its first
/// element: a small even group number followed by a valid explicit VR, or by a plausible
/// implicit-VR length.
pub fn sniff_dataset(bytes: &[u8]) -> Option<Syntax> {
    if bytes.len() < 8 {
        return None;
    }
    let plausible = |g: u16| (0x0002..=0x0008).contains(&g) && g.is_multiple_of(2);
    if plausible(u16::from_le_bytes([bytes[0], bytes[1]])) {
        if is_vr(&bytes[4..6]) {
            return Some(Syntax::EXPLICIT_LE);
        }
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if (len as usize) <= bytes.len() - 8 || len == UNDEFINED {
            return Some(Syntax::IMPLICIT_LE);
        }
    }
    if plausible(u16::from_be_bytes([bytes[0], bytes[1]])) && is_vr(&bytes[4..6]) {
        return Some(Syntax::EXPLICIT_BE);
    }
    None
}
