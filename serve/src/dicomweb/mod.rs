//! DICOMweb: ldct between a PACS and its users, the PACS side (the routes are
//! [`crate::http::dicomweb`] and [`crate::http::jobs`]).
//!
//! - [`service`]: the DICOMweb side of the server from the flags (PACS, spool, jobs).
//! - [`process`]: decode a part, denoise a chunk of slices, write the derived instances
//!   to the spool (shared by STOW-RS and the pull jobs of [`crate::jobs`]).
//! - [`report`]: the STOW-RS Store Instances Response.
//! - [`rules`]: which received instances are denoised, passed through or refused.
//! - [`spool`]: the bounded on-disk queue of derived instances for the PACS.
//! - [`push`]: the worker that drains the spool to the PACS by STOW-RS, with retries.
//! - [`client`]: the DICOMweb client (STOW-RS, QIDO-RS, WADO-RS) with basic or bearer
//!   authentication.
//! - [`multipart`]: `multipart/related` parsing and writing.
//!
//! All of it is on only with `--pacs-url`; without it these routes answer 501
//! `pacs_not_configured`.

pub mod client;
pub mod multipart;
pub mod process;
pub mod push;
pub mod report;
pub mod rules;
pub mod service;
pub mod spool;
