//! DICOM images in, HU out.
//!
//! - [`read_dicom_file`] / [`read_dicom_bytes`]: one DICOM instance to one [`CtImage`] per
//!   frame, in HU, with its geometry and a little metadata ([`DicomSlices`]). Single-frame
//!   images (CT Image Storage, or any other single-channel grayscale image: MR, CR, ...,
//!   the modality is reported for the caller to judge) and Enhanced CT multi-frame images
//!   (rescale, pixel spacing, position and orientation from the frame's Per-frame
//!   Functional Group, else the Shared one, else the top-level attributes).
//! - [`parse_dicom_bytes`] + [`decode_object`] / [`object_meta`]: the same in steps, for
//!   callers that keep the parsed data set (e.g. to write a derived instance).
//! - [`read_series_dir`]: the DICOM files of a folder (not its subfolders) as one series,
//!   sorted along the slice normal.
//! - [`is_dicom_file`]: a cheap sniff, for picking DICOM files out of a folder or upload.
//!
//! Accepted files: the Part 10 layout, also without the 128-byte preamble, with a meta
//! group lacking its group length or transfer syntax, or with no meta group at all (a
//! bare data set, encoding guessed); data sets encoded differently from what their
//! transfer syntax says (e.g. implicit VR under JPEG), as pydicom reads them.
//!
//! # Values
//!
//! HU = `stored * RescaleSlope + RescaleIntercept` (1 and 0 when absent), computed in f64
//! and rounded to f32: the numbers of pydicom's `pixel_array * RescaleSlope +
//! RescaleIntercept` cast to float32 (tested bit for bit on every CT file of pydicom and
//! pydicom-data). Stored values follow pydicom 3: bits above BitsStored are discarded
//! and the value sign-extended when PixelRepresentation is 1 (native, RLE, JPEG); JPEG
//! 2000 samples are taken as decoded, unless the codestream's signedness disagrees with
//! PixelRepresentation (`J2K_pixelrep_mismatch.dcm`), when they are re-read at the
//! codestream's precision (pydicom's `apply_j2k_sign_correction`). MONOCHROME1 is not
//! inverted (HU do not depend on it); a Modality LUT Sequence is not applied (a warning
//! is logged).
//!
//! Transfer syntaxes: implicit / explicit VR little endian, explicit VR big endian,
//! deflated, encapsulated uncompressed, deflated image frames, RLE Lossless (8 / 16 / 32
//! bits, our own decoder), JPEG baseline, extended (8-bit) and lossless (process 14, SV1)
//! through jpeg-decoder, JPEG 2000 lossless / lossy (and HTJ2K if the codec handles the
//! stream) through OpenJPEG 2.5.3 (`openjpeg-sys`, built from its bundled C source; the
//! pure-Rust openjp2 port aborted on a fuzzed file). Lossy JPEG 2000 matches OpenJPEG (what
//! pydicom uses) exactly; lossy JPEG may differ by one grey level on a few pixels, as
//! JPEG decoders legitimately do (pydicom's own two plugins disagree likewise). Refused
//! with [`DicomUnsupported`](crate::ImagingError::DicomUnsupported) naming the UID:
//! JPEG-LS, JPEG XL, MPEG / HEVC video, unknown UIDs; also 12-bit lossy JPEG (not
//! implemented by jpeg-decoder) and 32-bit samples in JPEG / JPEG 2000.
//!
//! # Errors, never panics
//!
//! Not DICOM -> [`NotDicom`](crate::ImagingError::NotDicom); truncated or malformed ->
//! [`DicomCorrupt`](crate::ImagingError::DicomCorrupt), saying where and why; no pixel
//! data (structure set, SR, DICOMDIR, ...) -> [`NotAnImage`](crate::ImagingError::NotAnImage)
//! (but an *image* SOP class without pixel data is `DicomCorrupt`: a file cut at an
//! element boundary); colour, palette, 1-bit, float pixel data, unsupported transfer
//! syntaxes, images over [`MAX_PIXELS`] / [`MAX_FRAMES`] ->
//! [`DicomUnsupported`](crate::ImagingError::DicomUnsupported); a codec failure ->
//! [`DicomDecode`](crate::ImagingError::DicomDecode).
//!
//! Uploads are untrusted. Before dicom-rs sees a data set, a byte-level pass checks every
//! declared length against the bytes present and the sequence depth against
//! [`MAX_DEPTH`] (dicom-rs would otherwise reserve a declared 4 GiB, or recurse without
//! bound); a deflated data set is inflated under [`MAX_INFLATED`]; sizes are checked
//! before pixel buffers are allocated; and the parser and every codec call run under
//! `catch_unwind`, so a panic deep in a decoder becomes `DicomDecode` (the default panic
//! hook still prints it to stderr).
//!
//! [`CtImage`]: crate::CtImage

mod fragments;
mod meta;
mod parse;
mod pixels;
pub use pixels::supported_transfer_syntaxes;
mod read;
mod rle;
mod scan;
mod series;
mod values;

use std::io::Read;
use std::path::Path;

pub use dicom_object::DefaultDicomObject;
pub use parse::{parse_dicom_bytes, parse_dicom_bytes_within, MAX_INFLATED};
pub use read::{decode_object, object_meta, read_dicom_bytes, read_dicom_file};
pub use scan::MAX_DEPTH;
pub use series::read_series_dir;

use crate::error::Result;
use crate::image::{CtImage, CtVolume};

/// Largest image accepted, in pixels over all frames (rows x columns x frames): 1024
/// frames of 512 x 512, i.e. 1 GiB of f32 HU. Larger headers are refused before any
/// allocation ([`DicomUnsupported`](crate::ImagingError::DicomUnsupported)).
pub const MAX_PIXELS: u64 = 1 << 28;

/// Most frames accepted in one instance (Enhanced CT series have a few thousand at most).
pub const MAX_FRAMES: u32 = 1 << 16;

/// Modality LUT of one frame: `HU = stored * slope + intercept`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Default for Rescale {
    /// The identity (what a missing RescaleSlope / RescaleIntercept means).
    fn default() -> Self {
        Self {
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

/// Light metadata of a decoded DICOM instance.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomMeta {
    /// Modality (0008,0060), e.g. `CT`, `MR`.
    pub modality: Option<String>,
    /// SOP Class UID (from the data set, else the file meta group).
    pub sop_class_uid: String,
    /// SOP Instance UID (from the data set, else the file meta group).
    pub sop_instance_uid: String,
    pub series_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    /// The file's transfer syntax (for a bare data set, the one guessed).
    pub transfer_syntax_uid: String,
    pub rows: u32,
    pub cols: u32,
    /// Number of frames (1 for single-frame images).
    pub frames: u32,
    /// Rescale of the first frame (Enhanced CT may rescale each frame differently; the
    /// frames' HU always use their own).
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// Instance Number (0020,0013), when present and valid.
    pub instance_number: Option<i64>,
    pub series_description: Option<String>,
    /// `MONOCHROME1` or `MONOCHROME2` (HU do not depend on it).
    pub photometric_interpretation: String,
    pub bits_stored: u16,
    /// PixelRepresentation 1 (two's complement samples).
    pub signed: bool,
}

/// A decoded DICOM instance: one HU image per frame plus metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomSlices {
    /// One image per frame, in frame order, with per-frame geometry when known.
    pub frames: Vec<CtImage>,
    pub meta: DicomMeta,
}

impl DicomSlices {
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The first frame (every decoded instance has at least one).
    pub fn first(&self) -> Option<&CtImage> {
        self.frames.first()
    }

    /// The frames stacked as a volume `[frames, rows, cols]`, in frame order.
    pub fn to_volume(&self) -> Result<CtVolume> {
        CtVolume::from_slices(&self.frames)
    }
}

/// A cheap sniff (reads at most 132 bytes): `DICM` at offset 128 (standard file), `DICM`
/// at offset 0 (no preamble), or a data set that starts like DICOM (no meta group).
/// False for unreadable files and folders.
pub fn is_dicom_file(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(132);
    if file.take(132).read_to_end(&mut head).is_err() {
        return false;
    }
    (head.len() == 132 && &head[128..] == b"DICM")
        || head.starts_with(b"DICM")
        || meta::sniff_dataset(&head).is_some()
}

/// Transfer syntaxes whose whole data set is deflated.
fn is_deflated(ts: &str) -> bool {
    matches!(
        ts,
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" | "1.2.840.10008.1.2.4.205"
    )
}

/// Names of the transfer syntaxes we refuse, for error messages.
fn transfer_syntax_name(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.94" | "1.2.840.10008.1.2.4.95" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "MPEG-2",
        "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.103" => "MPEG-4 AVC/H.264",
        "1.2.840.10008.1.2.4.104" | "1.2.840.10008.1.2.4.105" | "1.2.840.10008.1.2.4.106" => {
            "MPEG-4 AVC/H.264"
        }
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "HEVC/H.265",
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            "JPEG XL"
        }
        "1.2.840.10008.1.2.6.1" => "RFC 2557 MIME encapsulation",
        _ => return None,
    })
}
