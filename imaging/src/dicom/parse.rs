//! Bytes to a parsed DICOM object: preamble / meta-group detection, pre-checks, dicom-rs.
//!
//! Accepted layouts: the standard Part 10 file (128-byte preamble, `DICM`, meta group,
//! data set); the same without the preamble (`DICM` at offset 0); a meta group without a
//! Transfer Syntax UID; and a bare data set with no meta group at all (as some old
//! archives store them), whose encoding (implicit / explicit VR, little / big endian) is
//! guessed from its first element. The last two get a synthesised meta group.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, OpenFileOptions};

use super::meta::{self, Syntax};
use super::scan;
use super::{is_deflated, transfer_syntax_name, MAX_PIXELS};
use crate::error::{ImagingError, Result};

/// Largest inflated data set accepted from a deflated transfer syntax (a deflate bomb
/// guard): room for [`MAX_PIXELS`] 32-bit samples plus 16 MiB of attributes.
pub const MAX_INFLATED: u64 = MAX_PIXELS * 4 + (16 << 20);

/// Parses a DICOM stream (with or without preamble / meta group) into an object.
///
/// Errors: [`ImagingError::NotDicom`] when the bytes do not start like DICOM;
/// [`ImagingError::DicomCorrupt`] when they do but the structure is truncated or broken;
/// [`ImagingError::DicomUnsupported`] for a transfer syntax dicom-rs cannot parse.
pub fn parse_dicom_bytes(bytes: &[u8]) -> Result<DefaultDicomObject> {
    parse_dicom_bytes_within(bytes, MAX_INFLATED)
}

/// [`parse_dicom_bytes`] with a deflated data set inflated to at most `max_inflated`
/// bytes (a receiver's bound from the largest slice it accepts; see
/// [`SliceLimits::max_data_set_bytes`](crate::limits::SliceLimits::max_data_set_bytes)).
pub fn parse_dicom_bytes_within(bytes: &[u8], max_inflated: u64) -> Result<DefaultDicomObject> {
    if bytes.is_empty() {
        return Err(ImagingError::NotDicom("the file is empty".into()));
    }
    let dicm = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(128)
    } else if bytes.starts_with(b"DICM") {
        Some(0)
    } else {
        None
    };
    let Some(start) = dicm else {
        let syntax = meta::sniff_dataset(bytes).ok_or_else(|| {
            ImagingError::NotDicom(if bytes.len() < 132 {
                format!(
                    "only {} bytes, no 'DICM' marker and no recognisable data set",
                    bytes.len()
                )
            } else {
                "no 'DICM' marker at offset 128 and no recognisable data set at the start".into()
            })
        })?;
        tracing::debug!(?syntax, "DICOM data set without a file meta group");
        let ts = syntax.transfer_syntax().to_string();
        return parse_dataset(None, bytes, 0, syntax, ts, &Default::default());
    };
    let meta = meta::read_meta(bytes, start)?;
    let data = &bytes[meta.end..];
    let Some(ts) = meta.transfer_syntax.clone() else {
        let syntax = meta::sniff_dataset(data).ok_or_else(|| {
            ImagingError::DicomCorrupt(
                "the file meta group has no Transfer Syntax UID and the data set encoding \
                 cannot be recognised"
                    .into(),
            )
        })?;
        let ts = syntax.transfer_syntax().to_string();
        return parse_dataset(None, data, meta.end, syntax, ts, &meta);
    };
    if is_deflated(&ts) {
        let inflated = inflate(data, max_inflated.min(MAX_INFLATED))?;
        return parse_dataset(None, &inflated, 0, Syntax::EXPLICIT_LE, ts, &meta).map_err(
            |e| match e {
                ImagingError::DicomCorrupt(m) => {
                    ImagingError::DicomCorrupt(format!("{m} of the inflated data set"))
                }
                other => other,
            },
        );
    }
    if !parseable_transfer_syntax(&ts) {
        // Never hand dicom-rs a data set the pre-check has not walked.
        return Err(ImagingError::DicomUnsupported(format!(
            "transfer syntax {ts}{} is not supported",
            transfer_syntax_name(&ts)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        )));
    }
    let claimed = Syntax::of_transfer_syntax(&ts);
    match meta::sniff_dataset(data) {
        // Some writers encode the data set in another syntax than the meta group says
        // (e.g. implicit VR under a JPEG transfer syntax); pydicom reads those too.
        Some(actual) if actual != claimed => {
            tracing::warn!(
                ts,
                ?actual,
                "the data set is not encoded as its transfer syntax says"
            );
            parse_dataset(None, data, meta.end, actual, ts, &meta)
        }
        _ if !meta.group_length_ok => parse_dataset(None, data, meta.end, claimed, ts, &meta),
        _ => parse_dataset(Some(&bytes[start..]), data, meta.end, claimed, ts, &meta),
    }
}

/// The standard transfer syntaxes (those dicom-rs knows): their data sets are implicit
/// VR LE, explicit VR BE, or explicit VR LE (possibly deflated). Pixel data support is a
/// separate question (see `pixels::Codec`); an object in, say, JPEG-LS can still be
/// parsed and reported as such.
fn parseable_transfer_syntax(ts: &str) -> bool {
    let Some(rest) = ts.strip_prefix("1.2.840.10008.1.2") else {
        return false;
    };
    matches!(rest, "" | ".1" | ".1.98" | ".1.99" | ".2" | ".5" | ".8.1")
        || rest.strip_prefix(".4.").is_some_and(|n| {
            matches!(
                n,
                "50" | "51"
                    | "57"
                    | "70"
                    | "80"
                    | "81"
                    | "90"
                    | "91"
                    | "92"
                    | "93"
                    | "94"
                    | "95"
                    | "100"
                    | "101"
                    | "102"
                    | "103"
                    | "104"
                    | "105"
                    | "106"
                    | "107"
                    | "108"
                    | "110"
                    | "111"
                    | "112"
                    | "201"
                    | "202"
                    | "203"
                    | "204"
                    | "205"
            )
        })
}

/// Inflates a deflated data set, refusing more than `max` bytes (read no further).
fn inflate(data: &[u8], max: u64) -> Result<Vec<u8>> {
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(max + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| ImagingError::DicomCorrupt(format!("cannot inflate the data set: {e}")))?;
    if inflated.len() as u64 > max {
        return Err(ImagingError::DicomUnsupported(format!(
            "the deflated data set inflates to more than {max} bytes: refused unread (a \
             deflate bomb guard)"
        )));
    }
    Ok(inflated)
}

/// Checks the data set bytes, then parses them with dicom-rs.
///
/// `original`: the original stream from `DICM` on, when its meta group can be used as it
/// is (`data` is then its tail); otherwise a meta group is synthesised for `syntax`, and
/// the object's transfer syntax set back to `ts` after parsing (a deflated or mislabelled
/// data set is handed over already decoded).
fn parse_dataset(
    original: Option<&[u8]>,
    data: &[u8],
    base: usize,
    syntax: Syntax,
    ts: String,
    meta: &meta::MetaInfo,
) -> Result<DefaultDicomObject> {
    let patches = scan::check_dataset(data, syntax, base)?;
    if let (Some(stream), true) = (original, patches.is_empty()) {
        match run_parser(stream)? {
            Ok(obj) => return Ok(obj),
            // dicom-rs is stricter about the meta group than about the data set (e.g. it
            // limits AE titles to 16 characters): retry once with a synthesised meta group.
            Err(e) => {
                tracing::debug!("retrying with a synthesised meta group: {}", describe(&e));
                return parse_dataset(None, data, base, syntax, ts, meta);
            }
        }
    }
    let mut stream = match original {
        Some(o) => {
            let mut v = Vec::with_capacity(o.len());
            v.extend_from_slice(&o[..o.len() - data.len()]);
            v
        }
        None => {
            let table = FileMetaTableBuilder::new()
                .transfer_syntax(syntax.transfer_syntax())
                .media_storage_sop_class_uid(meta.sop_class_uid.clone().unwrap_or_default())
                .media_storage_sop_instance_uid(meta.sop_instance_uid.clone().unwrap_or_default())
                .build()
                .map_err(|e| ImagingError::DicomCorrupt(describe(&e)))?;
            let mut v = b"DICM".to_vec();
            table
                .write(&mut v)
                .map_err(|e| ImagingError::DicomCorrupt(describe(&e)))?;
            v
        }
    };
    let data_start = stream.len();
    stream.extend_from_slice(data);
    for (offset, bytes) in patches {
        stream[data_start + offset..data_start + offset + 4].copy_from_slice(&bytes);
    }
    let mut obj = run_parser(&stream)?.map_err(|e| ImagingError::DicomCorrupt(describe(&e)))?;
    if original.is_none() {
        obj.meta_mut().transfer_syntax = ts;
    }
    Ok(obj)
}

/// Runs dicom-rs on `DICM` + meta + data set bytes.
fn run_parser(
    stream: &[u8],
) -> Result<std::result::Result<DefaultDicomObject, dicom_object::ReadError>> {
    catch_panic(|| {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .from_reader(stream)
    })
}

/// Runs dicom-rs under `catch_unwind`: a parser panic becomes [`ImagingError::DicomDecode`].
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        ImagingError::DicomDecode(format!("the DICOM parser panicked: {}", panic_message(&*p)))
    })
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// An error and its sources, as one line.
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        source = s.source();
    }
    msg
}
