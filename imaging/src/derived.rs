//! The derived DICOM instance written for a denoised CT slice (the DESIGN.md contract).
//!
//! Starting from the source data set, the derived instance
//!
//! - keeps every Patient, Study, Frame of Reference, equipment and geometry attribute
//!   (Image Position / Orientation, Pixel Spacing, Slice Thickness, ...) and the source's
//!   Rescale Slope / Intercept;
//! - gets a new SOP Instance UID and a new Series Instance UID, both deterministic
//!   ("2.25." UUID-form UIDs from a SHA-256 of the source UID, the model name and the
//!   model version): the SOP Instance UID from the source SOP Instance UID, the Series
//!   Instance UID from the source Series Instance UID (every slice of a source series
//!   denoised by one model version lands in one derived series), so a retried request
//!   never creates a duplicate;
//! - Image Type `DERIVED\SECONDARY` (later values of the source's Image Type, e.g.
//!   `AXIAL`, are kept), a Derivation Description naming the model, a Source Image
//!   Sequence referencing the source SOP Class / Instance, a Contributing Equipment
//!   Sequence (manufacturer `ldct`, model name, software version = model version),
//!   Series Description `"<source description> [ldct <model> <version>]"`;
//! - labels a PACS shows ([`SeriesLabels`]): a Series Number distinct from the source's
//!   (source + 1000 by default), a disclaimer in Image Comments, and in the Contributing
//!   Equipment item a Device UID derived from the model file's SHA-256 (it changes when
//!   the model changes);
//! - what a PACS and a physicist look up ([`Processing`]): Instance Creation Date / Time
//!   (when the derived instance was written), a Derivation Code Sequence item
//!   (DCM 113087 "Smoothing", CID 7203 Image Derivation) beside the Derivation
//!   Description, and a private block (creator [`PRIVATE_CREATOR`] in group
//!   [`PRIVATE_GROUP`]) with the model's name, version and SHA-256, the strength and the
//!   estimated noise of the source and of the derived pixels;
//! - pixel data written uncompressed (explicit VR little endian, 16 bits allocated,
//!   the source's Bits Stored and Pixel Representation), stored value =
//!   `round((HU - intercept) / slope)` clamped to the stored range.
//!
//! Single-frame images only (one CT slice per instance).

use dicom_core::value::{DataSetSequence, PrimitiveValue, C};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use ldct_proto::model_dir::sha256_hex;
use ndarray::Array2;

use crate::dicom::{object_meta, parse_dicom_bytes, DicomMeta};
use crate::error::{ImagingError, Result};

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Manufacturer written in the Contributing Equipment Sequence.
pub const MANUFACTURER: &str = "ldct";
/// Implementation Class UID of files ldct writes ("2.25." form, fixed).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.173626946114326655725853596530633465731";

/// Added to the source's Series Number for the derived series (and used as is when the
/// source has none).
pub const SERIES_NUMBER_OFFSET: i32 = 1000;
/// The Image Comments of a derived instance unless configured otherwise.
pub const DEFAULT_DISCLAIMER: &str =
    "Processed by ldct (machine denoising of low-dose CT); not for primary diagnosis";

/// The private group ldct's block goes in, and its Private Creator.
pub const PRIVATE_GROUP: u16 = 0x0011;
pub const PRIVATE_CREATOR: &str = "LDCT 1";
/// Element offsets in ldct's private block (the element is `(group, bb00 + offset)` for
/// the block `bb` the creator reserves, PS3.5 7.8.1).
pub mod private {
    /// LO: model name.
    pub const MODEL_NAME: u16 = 0x01;
    /// LO: model version.
    pub const MODEL_VERSION: u16 = 0x02;
    /// LO: SHA-256 of the model file (64 hex digits).
    pub const MODEL_SHA256: u16 = 0x03;
    /// DS: strength in [0, 1].
    pub const STRENGTH: u16 = 0x04;
    /// DS: estimated noise of the source, HU (absent when the slice has too little flat
    /// tissue for an estimate).
    pub const NOISE_IN_HU: u16 = 0x05;
    /// DS: estimated noise of the derived pixels, HU.
    pub const NOISE_OUT_HU: u16 = 0x06;
}
/// The Derivation Code Sequence item of a denoised image (CID 7203 Image Derivation).
pub const DERIVATION_CODE: (&str, &str, &str) = ("113087", "DCM", "Smoothing");

/// What a derived instance records of its making beyond the model: when it was written
/// and the noise figures (`Default`: none of them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Processing {
    /// Instance Creation Date (0008,0012) and Time (0008,0013), the server's local time.
    pub created: Option<chrono::NaiveDateTime>,
    /// Estimated noise (HU) of the source slice ([`crate::noise::estimate_noise_hu`]).
    pub noise_in_hu: Option<f32>,
    /// Estimated noise (HU) of the derived slice.
    pub noise_out_hu: Option<f32>,
}

impl Processing {
    /// Created now (local time), with the given noise figures.
    pub fn now(noise_in_hu: Option<f32>, noise_out_hu: Option<f32>) -> Self {
        Self {
            created: Some(chrono::Local::now().naive_local()),
            noise_in_hu,
            noise_out_hu,
        }
    }
}

/// How a derived series is labelled for a PACS (DICOM PS3.3 General Series and SOP
/// Common modules; the IHE AI Results profile's conventions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabels {
    /// Derived Series Number = the source's + this (this when the source has none).
    pub series_number_offset: i32,
    /// Written first in Image Comments (0020,4000); empty writes none.
    pub disclaimer: String,
}

impl Default for SeriesLabels {
    fn default() -> Self {
        Self {
            series_number_offset: SERIES_NUMBER_OFFSET,
            disclaimer: DEFAULT_DISCLAIMER.to_owned(),
        }
    }
}

/// The Device UID of a model file (its SHA-256): the same model, the same UID.
pub fn device_uid(model_sha256: &str) -> String {
    hashed_uid("device", &[model_sha256.trim()])
}

/// The model that produced the pixels, and how strongly it was applied.
#[derive(Debug, Clone, Copy)]
pub struct DerivedModel<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// SHA-256 of the model file (the manifest's `onnx.sha256`): the Device UID.
    pub sha256: &'a str,
    /// The strength in [0, 1] the denoised image was composed with (1: the model's
    /// output as it is; 0: the input's pixels).
    pub strength: f32,
}

impl DerivedModel<'_> {
    /// The strength as the UIDs and descriptions state it (two decimals).
    pub fn strength_text(&self) -> String {
        format!("{:.2}", self.strength)
    }

    /// The UID parts of the model: name and version, plus the strength when it is not
    /// 1 (so full-strength UIDs stay those of earlier releases, and each strength of a
    /// source gets its own derived instance, the same on every retry).
    fn uid_parts(&self) -> Vec<String> {
        let mut v = vec![self.name.to_owned(), self.version.to_owned()];
        if self.strength_text() != "1.00" {
            v.push(format!("strength {}", self.strength_text()));
        }
        v
    }
}

/// A derived instance: the Part 10 file bytes and its new UIDs.
#[derive(Debug, Clone)]
pub struct DerivedInstance {
    pub bytes: Vec<u8>,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
}

/// A "2.25." UID (a UUID, version 8, as one decimal integer) from a SHA-256 of `kind`
/// and `parts`. Valid UID syntax, at most 44 characters.
pub fn hashed_uid(kind: &str, parts: &[&str]) -> String {
    let mut msg = format!("ldct\0{kind}");
    for p in parts {
        msg.push('\0');
        msg.push_str(p);
    }
    // First 128 bits of the digest (lower-case hex, always 64 digits).
    let hex = sha256_hex(msg.as_bytes());
    let mut v = u128::from_str_radix(&hex[..32], 16).unwrap_or_default();
    // UUID version 8 (custom) and the RFC 4122 variant.
    v = (v & !(0xf_u128 << 76)) | (0x8_u128 << 76);
    v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    format!("2.25.{v}")
}

/// The derived SOP Instance UID of a source instance denoised by a model version.
pub fn derived_sop_instance_uid(source_sop_instance_uid: &str, model: DerivedModel<'_>) -> String {
    let mut parts = vec![source_sop_instance_uid.trim().to_owned()];
    parts.extend(model.uid_parts());
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    hashed_uid("instance", &parts)
}

/// The derived Series Instance UID of a source series denoised by a model version.
pub fn derived_series_instance_uid(source_series_uid: &str, model: DerivedModel<'_>) -> String {
    let mut parts = vec![source_series_uid.trim().to_owned()];
    parts.extend(model.uid_parts());
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    hashed_uid("series", &parts)
}

/// Parses `source` (a DICOM file), then [`derive`].
pub fn derive_from_bytes(
    source: &[u8],
    denoised_hu: &Array2<f32>,
    model: DerivedModel<'_>,
    labels: &SeriesLabels,
    processing: &Processing,
) -> Result<DerivedInstance> {
    let obj = parse_dicom_bytes(source)?;
    let meta = object_meta(&obj)?;
    derive(&obj, &meta, denoised_hu, model, labels, processing)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
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

fn strs(values: Vec<String>) -> PrimitiveValue {
    PrimitiveValue::Strs(C::from_vec(values))
}

fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from(scheme),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
    ])
}

/// Truncates to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Stored values for HU under a rescale, clamped to the range of `bits` bits
/// (two's complement when `signed`), as the 16-bit words of the pixel data.
pub fn stored_words(
    hu: &Array2<f32>,
    slope: f64,
    intercept: f64,
    bits: u16,
    signed: bool,
) -> Vec<u16> {
    let bits = bits.clamp(1, 16) as i32;
    let (lo, hi) = if signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    };
    hu.iter()
        .map(|&v| {
            let s = ((f64::from(v) - intercept) / slope).round();
            let s = if s.is_nan() {
                0
            } else {
                (s as i64).clamp(lo, hi)
            };
            // `s` lies in the stored range: two's complement in 16 bits when signed.
            if signed {
                s as i16 as u16
            } else {
                s as u16
            }
        })
        .collect()
}

/// Builds the derived instance of `source` (decoded as `meta`) with pixels
/// `denoised_hu` (see the module docs).
pub fn derive(
    source: &DefaultDicomObject,
    meta: &DicomMeta,
    denoised_hu: &Array2<f32>,
    model: DerivedModel<'_>,
    labels: &SeriesLabels,
    processing: &Processing,
) -> Result<DerivedInstance> {
    if meta.frames != 1 {
        return Err(ImagingError::DicomUnsupported(format!(
            "derived instances are written for single-frame images; this one has {} frames",
            meta.frames
        )));
    }
    let (rows, cols) = denoised_hu.dim();
    if (rows, cols) != (meta.rows as usize, meta.cols as usize) {
        return Err(ImagingError::SizeMismatch {
            a: (meta.rows as usize, meta.cols as usize),
            b: (rows, cols),
        });
    }
    let slope = meta.rescale_slope;
    let intercept = meta.rescale_intercept;
    if !(slope.is_finite() && slope != 0.0 && intercept.is_finite()) {
        return Err(ImagingError::DicomUnsupported(format!(
            "rescale slope {slope} / intercept {intercept} cannot be inverted"
        )));
    }
    if !(0.0..=1.0).contains(&model.strength) {
        return Err(ImagingError::Invalid(format!(
            "strength {} is outside [0, 1]",
            model.strength
        )));
    }
    if model.name.is_empty() || model.version.is_empty() {
        return Err(ImagingError::Invalid(
            "model name and version must be non-empty".into(),
        ));
    }
    let source_sop = meta.sop_instance_uid.trim().to_owned();
    if source_sop.is_empty() {
        return Err(ImagingError::DicomUnsupported(
            "the source has no SOP Instance UID".into(),
        ));
    }
    let sop_class = meta.sop_class_uid.trim().to_owned();
    let sop_uid = derived_sop_instance_uid(&source_sop, model);
    let series_uid = derived_series_instance_uid(
        meta.series_instance_uid.as_deref().unwrap_or(&source_sop),
        model,
    );

    let mut obj: InMemDicomObject = (**source).clone();

    // Identity of the new instance and series.
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(sop_uid.as_str()),
    ));
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(sop_class.as_str()),
    ));
    obj.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(series_uid.as_str()),
    ));
    let mut image_type = vec!["DERIVED".to_owned(), "SECONDARY".to_owned()];
    if let Some(e) = source.element_opt(tags::IMAGE_TYPE).ok().flatten() {
        if let Ok(values) = e.to_multi_str() {
            image_type.extend(values.iter().skip(2).map(|v| v.trim().to_owned()));
        }
    }
    obj.put(DataElement::new(tags::IMAGE_TYPE, VR::CS, strs(image_type)));
    let series_number = text(&obj, tags::SERIES_NUMBER)
        .and_then(|n| n.parse::<i64>().ok())
        .map_or(i64::from(labels.series_number_offset), |n| {
            n + i64::from(labels.series_number_offset)
        })
        .clamp(i64::from(i32::MIN), i64::from(i32::MAX));
    obj.put(DataElement::new(
        tags::SERIES_NUMBER,
        VR::IS,
        PrimitiveValue::from(series_number.to_string()),
    ));
    if !labels.disclaimer.trim().is_empty() {
        let comments = match text(&obj, tags::IMAGE_COMMENTS) {
            Some(c) => format!("{}\n{c}", labels.disclaimer.trim()),
            None => labels.disclaimer.trim().to_owned(),
        };
        obj.put(DataElement::new(
            tags::IMAGE_COMMENTS,
            VR::LT,
            PrimitiveValue::from(truncate(&comments, 10240)),
        ));
    }
    let suffix = format!("[ldct {} {}]", model.name, model.version);
    let description = match text(&obj, tags::SERIES_DESCRIPTION) {
        Some(d) => {
            let room = 64usize.saturating_sub(suffix.len() + 1);
            format!("{} {suffix}", truncate(&d, room))
        }
        None => suffix.clone(),
    };
    obj.put(DataElement::new(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        PrimitiveValue::from(truncate(&description, 64).trim()),
    ));
    obj.put(DataElement::new(
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        PrimitiveValue::from(format!(
            "Denoised by ldct model {} version {} at strength {} (low-dose CT denoising \
             network)",
            model.name,
            model.version,
            model.strength_text()
        )),
    ));
    let mut derivation: Vec<InMemDicomObject> = source
        .element_opt(tags::DERIVATION_CODE_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().map(|items| items.to_vec()))
        .unwrap_or_default();
    let (code, scheme, meaning) = DERIVATION_CODE;
    derivation.push(code_item(code, scheme, meaning));
    obj.put(DataElement::new(
        tags::DERIVATION_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(derivation),
    ));
    if let Some(created) = processing.created {
        obj.put(DataElement::new(
            tags::INSTANCE_CREATION_DATE,
            VR::DA,
            PrimitiveValue::from(created.format("%Y%m%d").to_string()),
        ));
        obj.put(DataElement::new(
            tags::INSTANCE_CREATION_TIME,
            VR::TM,
            PrimitiveValue::from(created.format("%H%M%S%.6f").to_string()),
        ));
    }
    put_private_block(&mut obj, model, processing);

    // Where the pixels came from, and who changed them.
    let mut source_ref = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class.as_str()),
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(source_sop.as_str()),
        ),
    ]);
    source_ref.put(DataElement::new(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![code_item(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )]),
    ));
    obj.put(DataElement::new(
        tags::SOURCE_IMAGE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![source_ref]),
    ));
    let equipment = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::MANUFACTURER,
            VR::LO,
            PrimitiveValue::from(MANUFACTURER),
        ),
        DataElement::new(
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            PrimitiveValue::from(truncate(model.name, 64)),
        ),
        DataElement::new(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            PrimitiveValue::from(truncate(model.version, 64)),
        ),
        DataElement::new(
            tags::DEVICE_UID,
            VR::UI,
            PrimitiveValue::from(device_uid(model.sha256)),
        ),
        DataElement::new(
            tags::CONTRIBUTION_DESCRIPTION,
            VR::ST,
            PrimitiveValue::from(format!(
                "Noise reduction by ldct model {} version {}, strength {}",
                model.name,
                model.version,
                model.strength_text()
            )),
        ),
        DataElement::new(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![code_item("109102", "DCM", "Processing Equipment")]),
        ),
    ]);
    let mut contributing: Vec<InMemDicomObject> = source
        .element_opt(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().map(|items| items.to_vec()))
        .unwrap_or_default();
    contributing.push(equipment);
    obj.put(DataElement::new(
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(contributing),
    ));

    // Pixels: native 16-bit words, the source's sample format and rescale.
    let bits = meta.bits_stored.clamp(1, 16);
    let words = stored_words(denoised_hu, slope, intercept, bits, meta.signed);
    let u16_value = |v: u16| PrimitiveValue::U16(C::from_vec(vec![v]));
    obj.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        u16_value(1),
    ));
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        u16_value(meta.rows as u16),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        u16_value(meta.cols as u16),
    ));
    obj.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        u16_value(16),
    ));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, u16_value(bits)));
    obj.put(DataElement::new(
        tags::HIGH_BIT,
        VR::US,
        u16_value(bits - 1),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        u16_value(u16::from(meta.signed)),
    ));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from(meta.photometric_interpretation.as_str()),
    ));
    obj.put(DataElement::new(
        tags::RESCALE_SLOPE,
        VR::DS,
        PrimitiveValue::from(format_ds(slope)),
    ));
    obj.put(DataElement::new(
        tags::RESCALE_INTERCEPT,
        VR::DS,
        PrimitiveValue::from(format_ds(intercept)),
    ));
    if text(&obj, tags::RESCALE_TYPE).is_none() {
        obj.put(DataElement::new(
            tags::RESCALE_TYPE,
            VR::LO,
            PrimitiveValue::from("HU"),
        ));
    }
    for stale in [
        tags::NUMBER_OF_FRAMES,
        tags::PLANAR_CONFIGURATION,
        tags::SMALLEST_IMAGE_PIXEL_VALUE,
        tags::LARGEST_IMAGE_PIXEL_VALUE,
        tags::SMALLEST_PIXEL_VALUE_IN_SERIES,
        tags::LARGEST_PIXEL_VALUE_IN_SERIES,
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        tags::FLOAT_PIXEL_DATA,
        tags::DOUBLE_FLOAT_PIXEL_DATA,
    ] {
        obj.remove_element(stale);
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(C::from_vec(words)),
    ));

    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .media_storage_sop_class_uid(sop_class.as_str())
                .media_storage_sop_instance_uid(sop_uid.as_str())
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(concat!("LDCT_", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(|e| ImagingError::DicomWrite(e.to_string()))?;
    let mut bytes = Vec::with_capacity(rows * cols * 2 + 4096);
    file.write_all(&mut bytes)
        .map_err(|e| ImagingError::DicomWrite(e.to_string()))?;
    Ok(DerivedInstance {
        bytes,
        sop_instance_uid: sop_uid,
        series_instance_uid: series_uid,
        sop_class_uid: sop_class,
    })
}

/// The Private Creator element of ldct's block in `obj`: the one already there, else
/// the first free slot (0x10..=0xFF) of [`PRIVATE_GROUP`]; `None` when all are taken.
fn private_block(obj: &InMemDicomObject) -> Option<u16> {
    let mut free = None;
    for slot in 0x10u16..=0xFF {
        match text(obj, Tag(PRIVATE_GROUP, slot)) {
            Some(c) if c.trim() == PRIVATE_CREATOR => return Some(slot),
            Some(_) => {}
            None if free.is_none()
                && obj
                    .element_opt(Tag(PRIVATE_GROUP, slot))
                    .ok()
                    .flatten()
                    .is_none() =>
            {
                free = Some(slot)
            }
            None => {}
        }
    }
    free
}

/// Writes ldct's private block: model name, version, SHA-256, strength, noise figures.
fn put_private_block(obj: &mut InMemDicomObject, model: DerivedModel<'_>, p: &Processing) {
    let Some(slot) = private_block(obj) else {
        tracing::warn!(
            "no free private block in group 0x0011: the private figures are not written"
        );
        return;
    };
    // Whatever an earlier writer left in the block goes first.
    let base = slot << 8;
    let stale: Vec<Tag> = obj
        .iter()
        .map(|e| e.header().tag)
        .filter(|t| t.group() == PRIVATE_GROUP && (t.element() & 0xFF00) == base)
        .collect();
    for t in stale {
        obj.remove_element(t);
    }
    obj.put(DataElement::new(
        Tag(PRIVATE_GROUP, slot),
        VR::LO,
        PrimitiveValue::from(PRIVATE_CREATOR),
    ));
    let tag = |offset: u16| Tag(PRIVATE_GROUP, base | offset);
    let lo = |v: &str| PrimitiveValue::from(truncate(v.trim(), 64));
    obj.put(DataElement::new(
        tag(private::MODEL_NAME),
        VR::LO,
        lo(model.name),
    ));
    obj.put(DataElement::new(
        tag(private::MODEL_VERSION),
        VR::LO,
        lo(model.version),
    ));
    obj.put(DataElement::new(
        tag(private::MODEL_SHA256),
        VR::LO,
        lo(model.sha256),
    ));
    obj.put(DataElement::new(
        tag(private::STRENGTH),
        VR::DS,
        PrimitiveValue::from(model.strength_text()),
    ));
    for (offset, v) in [
        (private::NOISE_IN_HU, p.noise_in_hu),
        (private::NOISE_OUT_HU, p.noise_out_hu),
    ] {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            obj.put(DataElement::new(
                tag(offset),
                VR::DS,
                PrimitiveValue::from(format!("{v:.2}")),
            ));
        }
    }
}

/// A decimal string (DS, at most 16 characters) for a rescale value.
fn format_ds(v: f64) -> String {
    let plain = format!("{v}");
    if plain.len() <= 16 {
        return plain;
    }
    for prec in (1..=10).rev() {
        let s = format!("{v:.prec$e}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: DerivedModel<'static> = DerivedModel {
        name: "tiny",
        version: "0.1.0",
        sha256: "ab12",
        strength: 1.0,
    };
    const NONE: Processing = Processing {
        created: None,
        noise_in_hu: None,
        noise_out_hu: None,
    };

    #[test]
    fn uids_are_deterministic_valid_and_distinct() {
        let a = derived_sop_instance_uid("1.2.3.4", MODEL);
        assert_eq!(a, derived_sop_instance_uid("1.2.3.4", MODEL));
        assert_ne!(a, derived_sop_instance_uid("1.2.3.5", MODEL));
        assert_ne!(
            a,
            derived_sop_instance_uid(
                "1.2.3.4",
                DerivedModel {
                    name: "tiny",
                    version: "0.2.0",
                    sha256: "ab12",
                    strength: 1.0,
                }
            )
        );
        // Another strength is another derived instance; full strength keeps the UIDs of
        // releases without a strength.
        let half = DerivedModel {
            strength: 0.5,
            ..MODEL
        };
        assert_ne!(a, derived_sop_instance_uid("1.2.3.4", half));
        assert_eq!(
            a,
            hashed_uid("instance", &["1.2.3.4", MODEL.name, MODEL.version])
        );
        assert_ne!(a, derived_series_instance_uid("1.2.3.4", MODEL));
        for uid in [a, derived_series_instance_uid("9.8.7", MODEL)] {
            assert!(uid.len() <= 64, "{uid}");
            assert!(uid.starts_with("2.25."));
            let digits = &uid[5..];
            assert!(digits.chars().all(|c| c.is_ascii_digit()));
            assert!(!digits.starts_with('0'));
        }
    }

    #[test]
    fn stored_values_round_and_clamp() {
        let hu =
            Array2::from_shape_vec((1, 5), vec![-1024.0, -1000.4, 0.6, 5000.0, -40000.0]).unwrap();
        // Unsigned 12 bit, intercept -1024: stored = HU + 1024 in [0, 4095].
        assert_eq!(
            stored_words(&hu, 1.0, -1024.0, 12, false),
            vec![0, 24, 1025, 4095, 0]
        );
        // Signed 16 bit, intercept 0.
        let w = stored_words(&hu, 1.0, 0.0, 16, true);
        let s: Vec<i16> = w.iter().map(|&v| v as i16).collect();
        assert_eq!(s, vec![-1024, -1000, 1, 5000, -32768]);
        // Slope 0.5: stored = 2 HU.
        let hu = Array2::from_shape_vec((1, 2), vec![10.0, -10.2]).unwrap();
        let s: Vec<i16> = stored_words(&hu, 0.5, 0.0, 16, true)
            .iter()
            .map(|&v| v as i16)
            .collect();
        assert_eq!(s, vec![20, -20]);
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(format_ds(1.0), "1");
        assert_eq!(format_ds(-1024.0), "-1024");
        assert!(format_ds(0.123_456_789_012_345_67).len() <= 16);
        assert!(format_ds(-1.234_567_890_123e-7).len() <= 16);
    }

    /// A small single-frame CT instance (implicit VR little endian, 12-bit unsigned,
    /// intercept -1024) written with dicom-object.
    fn source_ct() -> Vec<u8> {
        use dicom_dictionary_std::uids;
        let (rows, cols) = (6u16, 5u16);
        let pixels: Vec<u16> = (0..rows * cols).map(|i| 1000 + i * 7).collect();
        let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let u =
            |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::U16(C::from_vec(vec![v])));
        let obj = InMemDicomObject::from_element_iter([
            s(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5.6"),
            s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"),
            s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
            s(tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.3.9"),
            s(tags::PATIENT_ID, VR::LO, "P1"),
            s(tags::MODALITY, VR::CS, "CT"),
            DataElement::new(
                tags::IMAGE_TYPE,
                VR::CS,
                strs(vec!["ORIGINAL".into(), "PRIMARY".into(), "AXIAL".into()]),
            ),
            s(tags::SERIES_DESCRIPTION, VR::LO, "Head 5mm"),
            s(tags::PIXEL_SPACING, VR::DS, "0.5\\0.5"),
            s(tags::RESCALE_SLOPE, VR::DS, "1"),
            s(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
            u(tags::SAMPLES_PER_PIXEL, 1),
            s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            u(tags::ROWS, rows),
            u(tags::COLUMNS, cols),
            u(tags::BITS_ALLOCATED, 16),
            u(tags::BITS_STORED, 12),
            u(tags::HIGH_BIT, 11),
            u(tags::PIXEL_REPRESENTATION, 0),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(C::from_vec(pixels)),
            ),
        ]);
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::IMPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    #[test]
    fn the_series_number_moves_by_the_offset_and_the_device_uid_follows_the_model_file() {
        let mut obj = parse_dicom_bytes(&source_ct()).unwrap();
        obj.put(DataElement::new(
            tags::SERIES_NUMBER,
            VR::IS,
            PrimitiveValue::from("3"),
        ));
        obj.put(DataElement::new(
            tags::IMAGE_COMMENTS,
            VR::LT,
            PrimitiveValue::from("from the scanner"),
        ));
        let meta = object_meta(&obj).unwrap();
        let hu = Array2::zeros((6, 5));
        let labels = SeriesLabels {
            series_number_offset: 500,
            disclaimer: "Not for diagnosis".into(),
        };
        let d = derive(&obj, &meta, &hu, MODEL, &labels, &NONE).unwrap();
        let out = parse_dicom_bytes(&d.bytes).unwrap();
        assert_eq!(text(&out, tags::SERIES_NUMBER).unwrap(), "503");
        assert_eq!(
            text(&out, tags::IMAGE_COMMENTS).unwrap(),
            "Not for diagnosis\nfrom the scanner"
        );
        let device = |o: &InMemDicomObject| {
            let items = o
                .element(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .to_vec();
            text(items.last().unwrap(), tags::DEVICE_UID).unwrap()
        };
        let other = DerivedModel {
            sha256: "cd34",
            ..MODEL
        };
        let d2 = derive(&obj, &meta, &hu, other, &labels, &NONE).unwrap();
        let out2 = parse_dicom_bytes(&d2.bytes).unwrap();
        assert_ne!(device(&out), device(&out2));
        assert_eq!(device(&out), device_uid("ab12"));
        assert!(device_uid("ab12").starts_with("2.25."));
        // No disclaimer configured: the source's comments as they were.
        let quiet = SeriesLabels {
            disclaimer: String::new(),
            ..labels
        };
        let d3 = derive(&obj, &meta, &hu, MODEL, &quiet, &NONE).unwrap();
        let out3 = parse_dicom_bytes(&d3.bytes).unwrap();
        assert_eq!(
            text(&out3, tags::IMAGE_COMMENTS).unwrap(),
            "from the scanner"
        );
    }

    #[test]
    fn derived_instance_round_trips_through_the_reader() {
        let src = source_ct();
        let source = crate::dicom::read_dicom_bytes(&src).unwrap();
        let hu_in = &source.frames[0].hu;
        assert_eq!(hu_in[[0, 0]], -24.0);
        // "Denoised": shifted by 10.4 HU, one value far below the stored range.
        let mut hu = hu_in.mapv(|v| v + 10.4);
        hu[[5, 4]] = -5000.0;
        let d = derive_from_bytes(&src, &hu, MODEL, &SeriesLabels::default(), &NONE).unwrap();
        let back = crate::dicom::read_dicom_bytes(&d.bytes).unwrap();
        let m = &back.meta;
        assert_eq!(m.transfer_syntax_uid, EXPLICIT_VR_LE);
        assert_eq!(m.sop_instance_uid, d.sop_instance_uid);
        assert_eq!(
            m.sop_instance_uid,
            derived_sop_instance_uid("1.2.3.4.5.6", MODEL)
        );
        assert_eq!(
            m.series_instance_uid.as_deref(),
            Some(derived_series_instance_uid("1.2.3.4.5", MODEL).as_str())
        );
        assert_eq!(m.study_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!((m.rescale_slope, m.rescale_intercept), (1.0, -1024.0));
        assert_eq!((m.bits_stored, m.signed), (12, false));
        assert_eq!(back.frames[0].pixel_spacing, Some([0.5, 0.5]));
        let out = &back.frames[0].hu;
        for ((y, x), &v) in out.indexed_iter() {
            let want = if (y, x) == (5, 4) {
                -1024.0
            } else {
                (hu[[y, x]]).round()
            };
            assert_eq!(v, want, "at {y},{x}");
        }
        let obj = parse_dicom_bytes(&d.bytes).unwrap();
        let image_type = obj
            .element(tags::IMAGE_TYPE)
            .unwrap()
            .to_multi_str()
            .unwrap()
            .to_vec();
        assert_eq!(image_type, ["DERIVED", "SECONDARY", "AXIAL"]);
        assert_eq!(
            text(&obj, tags::SERIES_DESCRIPTION).unwrap(),
            "Head 5mm [ldct tiny 0.1.0]"
        );
        assert_eq!(text(&obj, tags::FRAME_OF_REFERENCE_UID).unwrap(), "1.2.3.9");
        assert_eq!(text(&obj, tags::PATIENT_ID).unwrap(), "P1");
        assert!(text(&obj, tags::DERIVATION_DESCRIPTION)
            .unwrap()
            .contains("tiny"));
        let src_ref = &obj
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            text(src_ref, tags::REFERENCED_SOP_INSTANCE_UID).unwrap(),
            "1.2.3.4.5.6"
        );
        let eq = &obj
            .element(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(text(eq, tags::MANUFACTURER).unwrap(), "ldct");
        assert_eq!(text(eq, tags::SOFTWARE_VERSIONS).unwrap(), "0.1.0");
        assert_eq!(text(eq, tags::DEVICE_UID).unwrap(), device_uid("ab12"));
        // The source has no Series Number: the offset itself; the disclaimer is there.
        assert_eq!(text(&obj, tags::SERIES_NUMBER).unwrap(), "1000");
        assert_eq!(
            text(&obj, tags::IMAGE_COMMENTS).unwrap(),
            DEFAULT_DISCLAIMER
        );
        // A retry derives byte-identical output.
        assert_eq!(
            derive_from_bytes(&src, &hu, MODEL, &SeriesLabels::default(), &NONE)
                .unwrap()
                .bytes,
            d.bytes
        );
        // Wrong size is an error, not a panic.
        assert!(derive_from_bytes(
            &src,
            &Array2::zeros((2, 2)),
            MODEL,
            &SeriesLabels::default(),
            &NONE
        )
        .is_err());
    }

    #[test]
    fn creation_time_derivation_code_and_private_block_are_written() {
        let src = source_ct();
        let hu = Array2::zeros((6, 5));
        let created = chrono::NaiveDate::from_ymd_opt(2026, 12, 3)
            .unwrap()
            .and_hms_micro_opt(21, 4, 5, 250_000)
            .unwrap();
        let p = Processing {
            created: Some(created),
            noise_in_hu: Some(27.456),
            noise_out_hu: Some(f32::NAN),
        };
        let d = derive_from_bytes(&src, &hu, MODEL, &SeriesLabels::default(), &p).unwrap();
        let obj = parse_dicom_bytes(&d.bytes).unwrap();
        assert_eq!(
            text(&obj, tags::INSTANCE_CREATION_DATE).unwrap(),
            "20261203"
        );
        assert_eq!(
            text(&obj, tags::INSTANCE_CREATION_TIME).unwrap(),
            "210405.250000"
        );
        let code = &obj
            .element(tags::DERIVATION_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(text(code, tags::CODE_VALUE).unwrap(), "113087");
        assert_eq!(text(code, tags::CODING_SCHEME_DESIGNATOR).unwrap(), "DCM");
        // The source has no private block: ldct's takes the first slot.
        assert_eq!(text(&obj, Tag(0x0011, 0x0010)).unwrap(), PRIVATE_CREATOR);
        let at = |o: u16| text(&obj, Tag(0x0011, 0x1000 | o));
        assert_eq!(at(private::MODEL_NAME).unwrap(), "tiny");
        assert_eq!(at(private::MODEL_VERSION).unwrap(), "0.1.0");
        assert_eq!(at(private::MODEL_SHA256).unwrap(), "ab12");
        assert_eq!(at(private::STRENGTH).unwrap(), "1.00");
        assert_eq!(at(private::NOISE_IN_HU).unwrap(), "27.46");
        // A figure that is not finite is left out, not written as "NaN".
        assert!(at(private::NOISE_OUT_HU).is_none());
        // Nothing written without a creation time.
        let d = derive_from_bytes(&src, &hu, MODEL, &SeriesLabels::default(), &NONE).unwrap();
        let obj = parse_dicom_bytes(&d.bytes).unwrap();
        assert!(text(&obj, tags::INSTANCE_CREATION_DATE).is_none());
    }

    #[test]
    fn the_private_block_takes_a_free_slot_and_keeps_other_creators() {
        let mut obj = parse_dicom_bytes(&source_ct()).unwrap();
        obj.put(DataElement::new(
            Tag(0x0011, 0x0010),
            VR::LO,
            PrimitiveValue::from("ACME 1"),
        ));
        obj.put(DataElement::new(
            Tag(0x0011, 0x1001),
            VR::LO,
            PrimitiveValue::from("acme value"),
        ));
        let meta = object_meta(&obj).unwrap();
        let hu = Array2::zeros((6, 5));
        let p = Processing {
            noise_out_hu: Some(3.0),
            ..NONE
        };
        let d = derive(&obj, &meta, &hu, MODEL, &SeriesLabels::default(), &p).unwrap();
        let out = parse_dicom_bytes(&d.bytes).unwrap();
        assert_eq!(text(&out, Tag(0x0011, 0x1001)).unwrap(), "acme value");
        assert_eq!(text(&out, Tag(0x0011, 0x0011)).unwrap(), PRIVATE_CREATOR);
        assert_eq!(text(&out, Tag(0x0011, 0x1101)).unwrap(), "tiny");
        assert_eq!(text(&out, Tag(0x0011, 0x1106)).unwrap(), "3.00");
    }
}
