//! DICOM networking (DIMSE) beside DICOMweb, on dicom-rs's `dicom-ul`:
//!
//! - [`scp`]: the C-ECHO and C-STORE SCP (`--dimse-bind`): received CT instances are
//!   denoised like STOW-RS instances and spooled before the C-STORE response;
//! - [`scu`]: the C-STORE SCU the push worker uses for `--pacs-dimse`;
//! - [`message`]: the DIMSE command sets (C-ECHO, C-STORE) and status codes;
//! - [`access`]: AE titles, the allow-list of callers, DIMSE peers.

pub mod access;
pub mod message;
pub mod scp;
pub mod scu;
