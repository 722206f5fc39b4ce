//! One DICOM instance to HU frames: attribute checks, functional groups, geometry.

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use super::parse::parse_dicom_bytes;
use super::pixels::{decode_frames, Codec, PixelFormat};
use super::values::{first_item, float, float_array, int, items, string, Int, Obj};
use super::{transfer_syntax_name, DicomMeta, DicomSlices, Rescale, MAX_FRAMES, MAX_PIXELS};
use crate::error::{ImagingError, Result};
use crate::image::CtImage;

/// Reads one DICOM file (see the [module docs](super) for what is accepted).
/// Error messages name the file.
pub fn read_dicom_file(path: &Path) -> Result<DicomSlices> {
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    read_dicom_bytes(&bytes).map_err(|e| with_path(e, path))
}

/// Reads one DICOM instance from memory (a Part 10 file, with or without preamble).
pub fn read_dicom_bytes(bytes: &[u8]) -> Result<DicomSlices> {
    decode_owned(parse_dicom_bytes(bytes)?)
}

/// Decodes an already parsed object (clones it when its pixel data is JPEG or JPEG 2000,
/// because dicom-pixeldata's codecs need normalised attributes).
pub fn decode_object(obj: &DefaultDicomObject) -> Result<DicomSlices> {
    let p = prepare(obj)?;
    if !p.codec.uses_pixeldata() {
        p.finish(obj)
    } else {
        let mut owned = obj.clone();
        normalise(&mut owned, &p.fmt);
        p.finish(&owned)
    }
}

/// The metadata of a parsed object, with every check [`decode_object`] makes except
/// decoding the pixels (cheap: no pixel data is touched).
pub fn object_meta(obj: &DefaultDicomObject) -> Result<DicomMeta> {
    prepare(obj).map(|p| p.slices.meta)
}

/// Prefixes an error message with the file it came from.
pub(crate) fn with_path(e: ImagingError, path: &Path) -> ImagingError {
    let p = path.display();
    match e {
        ImagingError::NotDicom(m) => ImagingError::NotDicom(format!("{p}: {m}")),
        ImagingError::DicomCorrupt(m) => ImagingError::DicomCorrupt(format!("{p}: {m}")),
        ImagingError::NotAnImage(m) => ImagingError::NotAnImage(format!("{p}: {m}")),
        ImagingError::DicomUnsupported(m) => ImagingError::DicomUnsupported(format!("{p}: {m}")),
        ImagingError::DicomDecode(m) => ImagingError::DicomDecode(format!("{p}: {m}")),
        other => other,
    }
}

pub(crate) fn decode_owned(mut obj: DefaultDicomObject) -> Result<DicomSlices> {
    let p = prepare(&obj)?;
    if p.codec.uses_pixeldata() {
        normalise(&mut obj, &p.fmt);
    }
    p.finish(&obj)
}

/// Everything but the pixel values: checked format, per-frame rescale and geometry.
struct Prepared {
    slices: DicomSlices,
    fmt: PixelFormat,
    codec: Codec,
    rescale: Vec<Rescale>,
}

impl Prepared {
    fn finish(mut self, obj: &DefaultDicomObject) -> Result<DicomSlices> {
        let hu = decode_frames(obj, &self.fmt, self.codec, &self.rescale)?;
        for (frame, hu) in self.slices.frames.iter_mut().zip(hu) {
            frame.hu = hu;
        }
        Ok(self.slices)
    }
}

fn prepare(obj: &DefaultDicomObject) -> Result<Prepared> {
    let ds: &Obj = obj;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let sop_class_uid = string(ds, tags::SOP_CLASS_UID).unwrap_or_else(|| {
        obj.meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .into()
    });
    let modality = string(ds, tags::MODALITY);
    check_has_pixels(ds, &sop_class_uid, modality.as_deref())?;

    let spp = opt_u32(ds, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    let pi = string(ds, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
    if spp != 1 || !matches!(pi.as_str(), "MONOCHROME1" | "MONOCHROME2") {
        return Err(ImagingError::DicomUnsupported(format!(
            "only single-channel grayscale images are supported, this one has SamplesPerPixel \
             {spp} and PhotometricInterpretation {pi}"
        )));
    }
    let rows = required(ds, tags::ROWS, "Rows")?;
    let cols = required(ds, tags::COLUMNS, "Columns")?;
    let ba = required(ds, tags::BITS_ALLOCATED, "BitsAllocated")?;
    if !matches!(ba, 8 | 16 | 32) {
        return Err(ImagingError::DicomUnsupported(format!(
            "BitsAllocated {ba} is not supported (8, 16 or 32)"
        )));
    }
    let bs = opt_u32(ds, tags::BITS_STORED, "BitsStored")?.unwrap_or(ba);
    if bs == 0 || bs > ba {
        return Err(corrupt(format!(
            "BitsStored {bs} is invalid for BitsAllocated {ba}"
        )));
    }
    let signed = match opt_u32(ds, tags::PIXEL_REPRESENTATION, "PixelRepresentation")? {
        None | Some(0) => false,
        Some(1) => true,
        Some(v) => return Err(corrupt(format!("PixelRepresentation {v} is invalid"))),
    };
    if rows > 0xFFFF || cols > 0xFFFF {
        return Err(corrupt(format!(
            "{rows}x{cols} pixels: Rows and Columns are 16-bit"
        )));
    }
    let frames = opt_u32(ds, tags::NUMBER_OF_FRAMES, "NumberOfFrames")?.unwrap_or(1);
    if frames == 0 {
        return Err(corrupt("NumberOfFrames is 0".into()));
    }
    if frames > MAX_FRAMES {
        return Err(ImagingError::DicomUnsupported(format!(
            "{frames} frames, more than the limit of {MAX_FRAMES}"
        )));
    }
    let pixels = u64::from(rows) * u64::from(cols) * u64::from(frames);
    if pixels > MAX_PIXELS {
        return Err(ImagingError::DicomUnsupported(format!(
            "{frames} frame(s) of {rows}x{cols} is {pixels} pixels, more than the limit of \
             {MAX_PIXELS}"
        )));
    }
    let codec = Codec::of(&ts).ok_or_else(|| {
        ImagingError::DicomUnsupported(format!(
            "transfer syntax {ts}{} is not supported",
            transfer_syntax_name(&ts)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))
    })?;
    if ba == 32 && codec.uses_pixeldata() {
        return Err(ImagingError::DicomUnsupported(format!(
            "BitsAllocated 32 is only supported for native pixel data, not {ts}"
        )));
    }
    if ds.get(tags::MODALITY_LUT_SEQUENCE).is_some() {
        tracing::warn!("Modality LUT Sequence present: it is not applied (rescale only)");
    }

    let per_frame = items(ds, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let shared = first_item(ds, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    if !per_frame.is_empty() && per_frame.len() != frames as usize {
        tracing::warn!(
            items = per_frame.len(),
            frames,
            "Per-frame Functional Groups Sequence does not have one item per frame"
        );
    }
    let mut rescale = Vec::with_capacity(frames as usize);
    let mut images = Vec::with_capacity(frames as usize);
    for f in 0..frames as usize {
        // Attribute lookup order: this frame's functional group, the shared one, top level.
        let groups = |seq: Tag| {
            [per_frame.get(f), shared]
                .into_iter()
                .flatten()
                .filter_map(move |g| first_item(g, seq))
                .chain(std::iter::once(ds))
        };
        let r = frame_rescale(groups(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE))?;
        rescale.push(r);
        images.push(CtImage {
            hu: ndarray::Array2::zeros((0, 0)),
            pixel_spacing: groups(tags::PIXEL_MEASURES_SEQUENCE)
                .find_map(|g| float_array::<2>(g, tags::PIXEL_SPACING)),
            position: groups(tags::PLANE_POSITION_SEQUENCE)
                .find_map(|g| float_array::<3>(g, tags::IMAGE_POSITION_PATIENT)),
            orientation: groups(tags::PLANE_ORIENTATION_SEQUENCE)
                .find_map(|g| float_array::<6>(g, tags::IMAGE_ORIENTATION_PATIENT)),
        });
    }
    let meta = DicomMeta {
        modality,
        sop_instance_uid: string(ds, tags::SOP_INSTANCE_UID).unwrap_or_else(|| {
            obj.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .into()
        }),
        sop_class_uid,
        series_instance_uid: string(ds, tags::SERIES_INSTANCE_UID),
        study_instance_uid: string(ds, tags::STUDY_INSTANCE_UID),
        transfer_syntax_uid: ts,
        rows,
        cols,
        frames,
        rescale_slope: rescale[0].slope,
        rescale_intercept: rescale[0].intercept,
        instance_number: match int(ds, tags::INSTANCE_NUMBER) {
            Int::Value(v) => Some(v),
            _ => None,
        },
        series_description: string(ds, tags::SERIES_DESCRIPTION),
        photometric_interpretation: pi,
        bits_stored: bs as u16,
        signed,
    };
    let fmt = PixelFormat {
        rows: rows as usize,
        cols: cols as usize,
        frames: frames as usize,
        bits_allocated: ba as u16,
        bits_stored: bs as u16,
        signed,
    };
    Ok(Prepared {
        slices: DicomSlices {
            frames: images,
            meta,
        },
        fmt,
        codec,
        rescale,
    })
}

fn corrupt(msg: String) -> ImagingError {
    ImagingError::DicomCorrupt(msg)
}

/// NotAnImage for objects without pixel data; DicomCorrupt when the image attributes
/// are there but the pixel data is not (a file cut at an element boundary).
fn check_has_pixels(ds: &Obj, sop_class: &str, modality: Option<&str>) -> Result<()> {
    if ds.get(tags::PIXEL_DATA).is_some() {
        return Ok(());
    }
    if ds.get(tags::FLOAT_PIXEL_DATA).is_some() || ds.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some() {
        return Err(ImagingError::DicomUnsupported(
            "floating-point pixel data is not supported".into(),
        ));
    }
    if ds.get(tags::ROWS).is_some() && ds.get(tags::COLUMNS).is_some() {
        return Err(ImagingError::DicomCorrupt(
            "the data set has Rows and Columns but no Pixel Data: the file is probably truncated"
                .into(),
        ));
    }
    if is_image_sop_class(sop_class) {
        return Err(ImagingError::DicomCorrupt(format!(
            "an image object (SOP Class UID {sop_class}) without Pixel Data: the file is \
             probably truncated"
        )));
    }
    Err(ImagingError::NotAnImage(format!(
        "no Pixel Data (SOP Class UID {sop_class}, Modality {})",
        modality.unwrap_or("unknown")
    )))
}

/// Image storage SOP classes (CT, MR, CR/DX/MG, SC, NM, PET, US, XA/RF, RT Image/Dose)
/// whose objects must have pixel data.
fn is_image_sop_class(uid: &str) -> bool {
    let Some(rest) = uid.strip_prefix("1.2.840.10008.5.1.4.1.1.") else {
        return false;
    };
    let family = rest.split('.').next().unwrap_or("");
    (matches!(family, "1" | "2" | "3" | "4" | "6" | "7" | "12" | "20" | "128" | "130")
        && rest != "4.2") // MR Spectroscopy
        || matches!(rest, "481.1" | "481.2")
}

/// Rescale slope / intercept from the first group that has them (default 1 / 0).
fn frame_rescale<'a>(mut groups: impl Iterator<Item = &'a Obj>) -> Result<Rescale> {
    let found = groups
        .find(|g| g.get(tags::RESCALE_SLOPE).is_some() || g.get(tags::RESCALE_INTERCEPT).is_some());
    let Some(g) = found else {
        return Ok(Rescale::default());
    };
    let get = |tag: Tag, name: &str, default: f64| -> Result<f64> {
        if g.get(tag).is_none() {
            return Ok(default);
        }
        match float(g, tag) {
            Some(v) if v.is_finite() => Ok(v),
            None if string(g, tag).is_none() => Ok(default),
            _ => Err(ImagingError::DicomCorrupt(format!(
                "{name} {:?} is not a finite number",
                string(g, tag).unwrap_or_default()
            ))),
        }
    };
    Ok(Rescale {
        slope: get(tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?,
        intercept: get(tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?,
    })
}

fn opt_u32(ds: &Obj, tag: Tag, name: &str) -> Result<Option<u32>> {
    match int(ds, tag) {
        Int::Absent => Ok(None),
        Int::Value(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| ImagingError::DicomCorrupt(format!("{name} {v} is out of range"))),
        Int::Invalid(s) => Err(ImagingError::DicomCorrupt(format!(
            "{name} {s:?} is not an integer"
        ))),
    }
}

fn required(ds: &Obj, tag: Tag, name: &str) -> Result<u32> {
    match opt_u32(ds, tag, name)? {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err(ImagingError::DicomCorrupt(format!("{name} is 0"))),
        None => Err(ImagingError::DicomCorrupt(format!("{name} is missing"))),
    }
}

/// Rewrites the pixel module with clean binary values and drops what the codecs would
/// (needlessly) re-validate: dicom-pixeldata's strict attribute reader must not fail on
/// VR UN / text-encoded values, window or LUT attributes we do not use.
fn normalise(obj: &mut DefaultDicomObject, fmt: &PixelFormat) {
    let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let pi = string(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
    obj.put(us(tags::ROWS, fmt.rows as u16));
    obj.put(us(tags::COLUMNS, fmt.cols as u16));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(us(tags::BITS_ALLOCATED, fmt.bits_allocated));
    obj.put(us(tags::BITS_STORED, fmt.bits_stored));
    obj.put(us(tags::HIGH_BIT, fmt.bits_stored - 1));
    obj.put(us(tags::PIXEL_REPRESENTATION, u16::from(fmt.signed)));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from(pi),
    ));
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(fmt.frames.to_string()),
    ));
    for tag in [
        tags::PLANAR_CONFIGURATION,
        tags::RESCALE_SLOPE,
        tags::RESCALE_INTERCEPT,
        tags::WINDOW_CENTER,
        tags::WINDOW_WIDTH,
        tags::VOILUT_FUNCTION,
        tags::VOILUT_SEQUENCE,
        tags::MODALITY_LUT_SEQUENCE,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
    ] {
        obj.remove_element(tag);
    }
}
