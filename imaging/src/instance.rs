//! One received DICOM instance as a CT slice to denoise: parse, decode to HU, check that
//! it is a single-frame CT image ([`decode_ct`]); the attributes a receiver reads before
//! that ([`sop_uids`], [`text`]), the loop guard against denoising ldct's own output
//! ([`is_ldct_derived`]) and the UID syntax check ([`is_uid`]). The server's
//! `POST /v1/denoise`, STOW-RS receiver and pull jobs all go through here.

use dicom_dictionary_std::tags;
use ndarray::Array2;

use crate::dicom::{
    decode_object, object_meta, parse_dicom_bytes_within, DefaultDicomObject, DicomMeta,
};
use crate::limits::{SliceLimits, SliceTooLarge};
use crate::ImagingError;

/// CT Image Storage and Enhanced CT Image Storage.
pub const CT_SOP_CLASSES: [&str; 2] = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"];

/// A decoded single-frame CT instance: the parsed data set (kept to write the derived
/// instance), its metadata and its pixels in HU.
pub struct CtInstance {
    pub obj: DefaultDicomObject,
    pub meta: DicomMeta,
    pub hu: Array2<f32>,
}

/// Why an instance is not a usable CT slice.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Imaging(#[from] ImagingError),
    #[error("not a CT image (modality {modality:?}, SOP class {sop_class})")]
    NotCt { modality: String, sop_class: String },
    #[error("{0} frames: send single-frame CT instances")]
    MultiFrame(u32),
    #[error(transparent)]
    TooLarge(#[from] SliceTooLarge),
}

/// Parses and decodes `bytes` ([`decode_ct_object`]).
pub fn decode_ct(bytes: &[u8], limits: &SliceLimits) -> Result<CtInstance, InstanceError> {
    decode_ct_object(
        parse_dicom_bytes_within(bytes, limits.max_data_set_bytes())?,
        limits,
    )
}

/// Decodes a parsed object; an error unless it is a single-frame CT image within
/// `limits`. Modality, SOP class, frame count and size are checked from the header
/// before any pixel is decoded, so a refused instance costs no pixel memory.
pub fn decode_ct_object(
    obj: DefaultDicomObject,
    limits: &SliceLimits,
) -> Result<CtInstance, InstanceError> {
    let header = object_meta(&obj)?;
    check_ct(&header)?;
    if header.frames != 1 {
        return Err(InstanceError::MultiFrame(header.frames));
    }
    limits.check(header.rows as usize, header.cols as usize)?;
    let slices = decode_object(&obj)?;
    let meta = slices.meta;
    check_ct(&meta)?;
    if meta.frames != 1 || slices.frames.len() != 1 {
        return Err(InstanceError::MultiFrame(meta.frames));
    }
    let hu = slices
        .frames
        .into_iter()
        .next()
        .map(|f| f.hu)
        .ok_or(InstanceError::MultiFrame(0))?;
    Ok(CtInstance { obj, meta, hu })
}

/// An error unless the header says CT (modality or SOP class).
fn check_ct(meta: &DicomMeta) -> Result<(), InstanceError> {
    let is_ct = meta.modality.as_deref().map(str::trim) == Some("CT")
        || CT_SOP_CLASSES.contains(&meta.sop_class_uid.trim());
    if !is_ct {
        return Err(InstanceError::NotCt {
            modality: meta.modality.clone().unwrap_or_else(|| "none".into()),
            sop_class: meta.sop_class_uid.clone(),
        });
    }
    Ok(())
}

/// A text attribute of the data set (trimmed; `None` when absent or empty).
pub fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_owned()
        })
        .filter(|s| !s.is_empty())
}

/// SOP Class and SOP Instance UID of a parsed object (data set, else file meta group).
pub fn sop_uids(obj: &DefaultDicomObject) -> (Option<String>, Option<String>) {
    let meta = obj.meta();
    let clean = |s: &str| {
        let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!s.is_empty()).then(|| s.to_owned())
    };
    (
        text(obj, tags::SOP_CLASS_UID).or_else(|| clean(&meta.media_storage_sop_class_uid)),
        text(obj, tags::SOP_INSTANCE_UID).or_else(|| clean(&meta.media_storage_sop_instance_uid)),
    )
}

/// Whether ldct made this instance (a Contributing Equipment item by manufacturer
/// `ldct`): such instances are not denoised again (a PACS auto-forward loop guard).
pub fn is_ldct_derived(obj: &DefaultDicomObject) -> bool {
    let Some(items) = obj
        .element_opt(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().map(|i| i.to_vec()))
    else {
        return false;
    };
    items.iter().any(|item| {
        item.element_opt(tags::MANUFACTURER)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .is_some_and(|m| m.trim() == crate::derived::MANUFACTURER)
    })
}

/// A syntactically valid DICOM UID (digits and dots, at most 64 characters, no empty
/// component): the only UIDs put in a URL or a file name.
pub fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax() {
        assert!(is_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_uid("2.25.1234"));
        assert!(!is_uid(""));
        assert!(!is_uid("1..2"));
        assert!(!is_uid("1.2."));
        assert!(!is_uid("../etc"));
        assert!(!is_uid("1.2.3/4"));
        assert!(!is_uid(&"1".repeat(65)));
    }

    #[test]
    fn garbage_is_not_dicom() {
        let e = decode_ct(b"hello", &SliceLimits::CT).err().unwrap();
        assert!(
            matches!(e, InstanceError::Imaging(ImagingError::NotDicom(_))),
            "{e:?}"
        );
    }
}
