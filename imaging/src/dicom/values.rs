//! Tolerant attribute access on a parsed data set.
//!
//! Values may arrive as text (DS, IS, US written as text by odd encoders), binary
//! numbers, or raw bytes (VR UN); these helpers accept each form and never panic.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::{DicomValueType, PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;

pub(crate) type Obj = InMemDicomObject;

/// The primitive value of `tag`, if present and primitive.
pub(crate) fn primitive(obj: &Obj, tag: Tag) -> Option<&PrimitiveValue> {
    match obj.get(tag)?.value() {
        Value::Primitive(p) => Some(p),
        _ => None,
    }
}

/// The items of the sequence `tag` (empty when absent or not a sequence).
pub(crate) fn items(obj: &Obj, tag: Tag) -> &[Obj] {
    match obj.get(tag).map(|e| e.value()) {
        Some(Value::Sequence(s)) => s.items(),
        _ => &[],
    }
}

/// The first item of the sequence `tag`.
pub(crate) fn first_item(obj: &Obj, tag: Tag) -> Option<&Obj> {
    items(obj, tag).first()
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

/// The value as text (multiple values joined by `\`), trimmed; None when empty.
pub(crate) fn string(obj: &Obj, tag: Tag) -> Option<String> {
    let p = primitive(obj, tag)?;
    let s = match p {
        PrimitiveValue::Str(s) => s.clone(),
        PrimitiveValue::Strs(v) => v.join("\\"),
        PrimitiveValue::U8(b) => String::from_utf8_lossy(b).into_owned(),
        PrimitiveValue::Empty => return None,
        other => other.to_str().into_owned(),
    };
    let t = trim(&s);
    (!t.is_empty()).then(|| t.to_string())
}

/// Parses text as in pydicom's DS/IS: each backslash-separated part trimmed.
fn parse_text_floats(s: &str) -> Option<Vec<f64>> {
    s.split('\\')
        .map(|part| trim(part).parse::<f64>().ok())
        .collect()
}

/// Numeric values of `tag` as f64 (DS / IS text, or binary FL / FD / US / SS / ...).
/// None when absent, empty or unparsable.
pub(crate) fn floats(obj: &Obj, tag: Tag) -> Option<Vec<f64>> {
    let p = primitive(obj, tag)?;
    let v: Vec<f64> = match p {
        PrimitiveValue::Empty => return None,
        PrimitiveValue::Str(s) => parse_text_floats(s)?,
        PrimitiveValue::Strs(v) => v
            .iter()
            .map(|s| trim(s).parse::<f64>().ok())
            .collect::<Option<Vec<_>>>()?,
        PrimitiveValue::U8(b) => parse_text_floats(std::str::from_utf8(b).ok()?)?,
        PrimitiveValue::F64(v) => v.to_vec(),
        PrimitiveValue::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        PrimitiveValue::U16(v) => v.iter().map(|&x| f64::from(x)).collect(),
        PrimitiveValue::I16(v) => v.iter().map(|&x| f64::from(x)).collect(),
        PrimitiveValue::U32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        PrimitiveValue::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        _ => return None,
    };
    (!v.is_empty()).then_some(v)
}

/// The first numeric value of `tag`.
pub(crate) fn float(obj: &Obj, tag: Tag) -> Option<f64> {
    floats(obj, tag)?.first().copied()
}

/// Exactly `N` finite numbers, else None.
pub(crate) fn float_array<const N: usize>(obj: &Obj, tag: Tag) -> Option<[f64; N]> {
    let v = floats(obj, tag)?;
    if v.len() < N || !v.iter().take(N).all(|x| x.is_finite()) {
        return None;
    }
    let mut out = [0.0; N];
    out.copy_from_slice(&v[..N]);
    Some(out)
}

/// Outcome of reading an integer attribute.
pub(crate) enum Int {
    Absent,
    Invalid(String),
    Value(i64),
}

/// The first integer value of `tag` (US / SS / UL / SL, IS text, or VR UN bytes).
pub(crate) fn int(obj: &Obj, tag: Tag) -> Int {
    let Some(p) = primitive(obj, tag) else {
        return Int::Absent;
    };
    let v = match p {
        PrimitiveValue::Empty => return Int::Absent,
        PrimitiveValue::U16(v) => v.first().map(|&x| i64::from(x)),
        PrimitiveValue::I16(v) => v.first().map(|&x| i64::from(x)),
        PrimitiveValue::U32(v) => v.first().map(|&x| i64::from(x)),
        PrimitiveValue::I32(v) => v.first().map(|&x| i64::from(x)),
        PrimitiveValue::U64(v) => v.first().and_then(|&x| i64::try_from(x).ok()),
        PrimitiveValue::I64(v) => v.first().copied(),
        // VR UN: binary when the dictionary says the attribute is binary (US, UL, ...).
        PrimitiveValue::U8(b) if binary_vr(tag).is_some() => {
            binary_vr(tag).and_then(|vr| un_binary_int(b, vr))
        }
        PrimitiveValue::Str(_) | PrimitiveValue::Strs(_) | PrimitiveValue::U8(_) => {
            let s = string(obj, tag).unwrap_or_default();
            let first = trim(s.split('\\').next().unwrap_or(""));
            if first.is_empty() {
                return Int::Absent;
            }
            match first.parse::<i64>() {
                Ok(v) => Some(v),
                Err(_) => return Int::Invalid(first.to_string()),
            }
        }
        _ => None,
    };
    match v {
        Some(v) => Int::Value(v),
        None => Int::Invalid(format!("{:?}", p.value_type())),
    }
}

/// The dictionary VR of `tag` when it is a binary integer VR (how a VR UN value of that
/// attribute is encoded; pydicom likewise reads UN with the dictionary VR).
fn binary_vr(tag: Tag) -> Option<VR> {
    let vr = StandardDataDictionary.by_tag(tag)?.vr().relaxed();
    matches!(vr, VR::US | VR::SS | VR::UL | VR::SL).then_some(vr)
}

/// The first value of a little-endian binary integer held as VR UN bytes.
fn un_binary_int(b: &[u8], vr: VR) -> Option<i64> {
    Some(match vr {
        VR::US => i64::from(u16::from_le_bytes(b.get(..2)?.try_into().ok()?)),
        VR::SS => i64::from(i16::from_le_bytes(b.get(..2)?.try_into().ok()?)),
        VR::UL => i64::from(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
        _ => i64::from(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
    })
}
