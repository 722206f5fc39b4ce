//! A byte-level pass over a DICOM stream before dicom-rs parses it.
//!
//! dicom-rs trusts the lengths a file declares: it reserves an element's declared length
//! before reading it, and it builds nested sequences recursively. A hostile or truncated
//! upload could therefore make it allocate gigabytes or overflow the stack. This module
//! walks the element structure first, without allocating, and rejects
//!
//! - any element, item or fragment whose declared length runs past the end of the data
//!   (or of its enclosing item / sequence): the file is truncated or corrupt;
//! - sequences nested deeper than [`MAX_DEPTH`];
//! - binary values whose length is not a multiple of their VR's value size (a UL of 43
//!   bytes): dicom-rs reads whole values and would continue 3 bytes early, out of step
//!   with this walk, and read a length out of pixel data or padding (a fuzzer found a
//!   488-byte implicit VR data set that made it reserve 2 GB that way);
//! - unterminated undefined-length sequences, items and pixel data.
//!
//! The walk follows dicom-rs's reading rules (which explicit VRs have 4-byte lengths,
//! unknown VRs read as UN, undefined lengths as sequences, the dictionary for implicit VR
//! sequences), so that what it accepts is what dicom-rs will read.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::meta::Syntax;
use crate::error::{ImagingError, Result};

/// Deepest sequence nesting accepted (real Enhanced objects use fewer than 10 levels).
pub const MAX_DEPTH: usize = 32;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Whether an explicit VR header has 2 reserved bytes and a 4-byte length. As in
/// dicom-rs (and PS3.5 7.1.2), that is every VR but the short ones, unknown bytes
/// included (dicom-rs reads those as UN).
pub(crate) fn has_long_length(vr: &[u8]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

pub(crate) fn is_vr(b: &[u8]) -> bool {
    b.len() == 2 && std::str::from_utf8(b).is_ok_and(|s| s.parse::<VR>().is_ok())
}

/// A 4-byte length to overwrite before dicom-rs reads the data: `(offset, bytes)`.
pub type Patch = (usize, [u8; 4]);

/// The size of one value of an element, as dicom-rs reads it: 2, 4 or 8 bytes for the
/// binary VRs, 1 for text and bytes. The explicit VR when there is one, else the
/// dictionary's (group lengths are UL).
fn value_size(explicit: Option<[u8; 2]>, tag: (u16, u16)) -> usize {
    let vr = match explicit {
        Some(b) => VR::from_binary(b),
        None if tag.1 == 0x0000 => Some(VR::UL),
        None => StandardDataDictionary
            .by_tag(Tag(tag.0, tag.1))
            .map(|e| e.vr().relaxed()),
    };
    match vr {
        Some(VR::US | VR::SS | VR::OW) => 2,
        Some(VR::UL | VR::SL | VR::FL | VR::AT | VR::OL | VR::OF) => 4,
        Some(VR::FD | VR::SV | VR::UV | VR::OD | VR::OV) => 8,
        _ => 1,
    }
}

/// Walks the whole data set, checking every declared length against the bytes present.
/// `base` is the file offset of `data[0]` (for messages).
///
/// Returns patches for undefined-length VR UN elements (a sequence re-encoded as UN,
/// whose content is implicit VR little endian): dicom-rs would parse their content with
/// the outer, explicit VR and misread it, so each gets its actual length instead and is
/// kept as opaque bytes. The total size does not change, so enclosing lengths stay valid.
pub fn check_dataset(data: &[u8], syntax: Syntax, base: usize) -> Result<Vec<Patch>> {
    let mut w = Walker {
        data,
        base,
        pos: 0,
        patches: Vec::new(),
    };
    w.elements(data.len(), false, syntax, 0)?;
    Ok(w.patches)
}

struct Walker<'a> {
    data: &'a [u8],
    base: usize,
    pos: usize,
    patches: Vec<Patch>,
}

impl Walker<'_> {
    fn corrupt(&self, what: String) -> ImagingError {
        ImagingError::DicomCorrupt(format!("{what} (at byte {})", self.base + self.pos))
    }

    fn need(&self, n: usize, end: usize, what: &str) -> Result<()> {
        if end - self.pos < n {
            return Err(self.corrupt(format!(
                "{what} needs {n} bytes but only {} remain: the data is truncated",
                end - self.pos
            )));
        }
        Ok(())
    }

    fn tag(&self, s: Syntax) -> (u16, u16) {
        let b = &self.data[self.pos..];
        (s.u16(b), s.u16(&b[2..]))
    }

    /// Elements until `end`, or until an item delimiter when `until_delimiter`.
    fn elements(
        &mut self,
        end: usize,
        until_delimiter: bool,
        s: Syntax,
        depth: usize,
    ) -> Result<()> {
        loop {
            if self.pos == end {
                if until_delimiter {
                    return Err(
                        self.corrupt("an item has no item delimiter: the data is truncated".into())
                    );
                }
                return Ok(());
            }
            if !until_delimiter && depth == 0 && end - self.pos < 8 {
                // Trailing zero padding after the last element is tolerated.
                if self.data[self.pos..end].iter().all(|&b| b == 0) {
                    return Ok(());
                }
            }
            self.need(8, end, "an element header")?;
            let tag = self.tag(s);
            if tag == ITEM_END {
                self.pos += 8;
                if until_delimiter {
                    return Ok(());
                }
                continue; // a stray delimiter: dicom-rs skips it
            }
            let (vr, header, len) = if s.explicit_vr && tag.0 != 0xFFFE {
                let vr = [self.data[self.pos + 4], self.data[self.pos + 5]];
                if has_long_length(&vr) {
                    self.need(12, end, "an element header")?;
                    (Some(vr), 12, s.u32(&self.data[self.pos + 8..]))
                } else {
                    (Some(vr), 8, u32::from(s.u16(&self.data[self.pos + 6..])))
                }
            } else {
                (None, 8, s.u32(&self.data[self.pos + 4..]))
            };
            let is_sq = match vr {
                Some(vr) => &vr == b"SQ",
                None => StandardDataDictionary
                    .by_tag(Tag(tag.0, tag.1))
                    .is_some_and(|e| e.vr().relaxed() == VR::SQ),
            };
            let at = self.pos;
            self.pos += header;
            if len == UNDEFINED {
                if tag == PIXEL_DATA {
                    self.fragments(end)?;
                } else {
                    // SQ, or UN holding a sequence (whose content is implicit VR LE).
                    // dicom-rs reads unknown VR bytes as UN.
                    let un = vr.is_some_and(|v| &v == b"UN" || !is_vr(&v));
                    let inner = if un { Syntax::IMPLICIT_LE } else { s };
                    let content = self.pos;
                    self.sequence(end, true, inner, depth + 1)?;
                    if un {
                        let len = (self.pos - content) as u32;
                        let bytes = if s.big_endian {
                            len.to_be_bytes()
                        } else {
                            len.to_le_bytes()
                        };
                        self.patches.push((at + 8, bytes));
                    }
                }
                continue;
            }
            let len = len as usize;
            let size = value_size(vr, tag);
            if !len.is_multiple_of(size) {
                self.pos = at;
                return Err(self.corrupt(format!(
                    "element ({:04X},{:04X}) declares {len} bytes, not a multiple of its \
                     values' {size} bytes: the data is corrupt",
                    tag.0, tag.1
                )));
            }
            if len > end - self.pos {
                self.pos = at;
                return Err(self.corrupt(format!(
                    "element ({:04X},{:04X}) declares {len} bytes but only {} remain: the data \
                     is truncated",
                    tag.0,
                    tag.1,
                    end - at - header
                )));
            }
            if is_sq {
                self.sequence(self.pos + len, false, s, depth + 1)?;
            } else {
                self.pos += len;
            }
        }
    }

    /// Items of a sequence, until `end` or a sequence delimiter.
    fn sequence(
        &mut self,
        end: usize,
        until_delimiter: bool,
        s: Syntax,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!(
                "sequences are nested deeper than {MAX_DEPTH} levels"
            )));
        }
        loop {
            if !until_delimiter && self.pos == end {
                return Ok(());
            }
            self.need(8, end, "a sequence item header")?;
            let tag = self.tag(s);
            let len = s.u32(&self.data[self.pos + 4..]);
            self.pos += 8;
            match tag {
                SEQ_END => return Ok(()),
                ITEM if len == UNDEFINED => self.elements(end, true, s, depth)?,
                ITEM => {
                    let len = len as usize;
                    if len > end - self.pos {
                        self.pos -= 8;
                        return Err(self.corrupt(format!(
                            "a sequence item declares {len} bytes but only {} remain: the data is \
                             truncated",
                            end - self.pos - 8
                        )));
                    }
                    let item_end = self.pos + len;
                    self.elements(item_end, false, s, depth)?;
                }
                (g, e) => {
                    self.pos -= 8;
                    return Err(self.corrupt(format!(
                        "expected a sequence item, found tag ({g:04X},{e:04X})"
                    )));
                }
            }
        }
    }

    /// Encapsulated pixel data fragments, until the sequence delimiter.
    fn fragments(&mut self, end: usize) -> Result<()> {
        // Item headers of encapsulated pixel data are always little endian.
        let s = Syntax::EXPLICIT_LE;
        loop {
            self.need(8, end, "a pixel data fragment header")?;
            let tag = self.tag(s);
            let len = s.u32(&self.data[self.pos + 4..]);
            match tag {
                SEQ_END => {
                    self.pos += 8;
                    return Ok(());
                }
                ITEM if len != UNDEFINED && (len as usize) <= end - self.pos - 8 => {
                    self.pos += 8 + len as usize;
                }
                ITEM => {
                    return Err(self.corrupt(format!(
                        "a pixel data fragment declares {len} bytes but only {} remain: the data \
                         is truncated",
                        end - self.pos - 8
                    )))
                }
                (g, e) => {
                    return Err(self.corrupt(format!(
                        "expected a pixel data fragment, found tag ({g:04X},{e:04X})"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    /// The fuzzer's case (tests/fuzz-regressions/dimse/oom-*): an implicit VR UL of 43
    /// bytes; dicom-rs reads ten values and then takes padding for the next header's
    /// length (2 GB reserved).
    #[test]
    fn a_binary_value_of_a_length_its_vr_cannot_hold_is_refused() {
        let mut data = element(0x0008, 0x0005, b"ISO_IR 100");
        data.extend(element(0x0028, 0x0010, &[0, 2])); // Rows, US: fine
        assert!(check_dataset(&data, Syntax::IMPLICIT_LE, 0).is_ok());
        let mut bad = data.clone();
        bad.extend(element(0x0000, 0x0000, &[0; 43]));
        let e = check_dataset(&bad, Syntax::IMPLICIT_LE, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(0000,0000) declares 43 bytes, not a multiple of its values' 4"),
            "{e}"
        );
        // Rows (US) of 3 bytes, by the dictionary's VR.
        let mut odd = element(0x0008, 0x0005, b"ISO_IR 100");
        odd.extend(element(0x0028, 0x0010, &[0, 2, 0]));
        assert!(check_dataset(&odd, Syntax::IMPLICIT_LE, 0).is_err());
        // Text of odd length stays a matter for the parser (1-byte values).
        let mut text = element(0x0008, 0x0005, b"ISO_IR 100");
        text.extend(element(0x0010, 0x0010, b"Doe"));
        assert!(check_dataset(&text, Syntax::IMPLICIT_LE, 0).is_ok());
    }
}
