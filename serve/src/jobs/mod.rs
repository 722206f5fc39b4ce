//! Pull jobs: `POST /v1/studies/{StudyInstanceUID}/denoise` finds the study's CT series
//! on the PACS, denoises them and stores the derived series back.
//!
//! - [`store`]: the jobs and their files in `--jobs-dir` (written, fsynced and renamed
//!   like the spool; finished jobs kept per `--jobs-keep`), the restart rules.
//! - [`runner`]: runs queued jobs: QIDO-RS, WADO-RS, denoise, spool, wait for the push.
//!
//! The routes are [`crate::http::jobs`].

pub mod runner;
pub mod store;
