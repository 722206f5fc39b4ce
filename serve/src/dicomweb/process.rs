//! Source instances in, derived instances in the spool out: the steps STOW-RS and pull
//! jobs share. Decoding and the checks of one part ([`decode_part`]), then
//! [`denoise_and_spool`]: every slice of a chunk queued to the batcher at once (so they
//! batch), the derived DICOM instance written by `ldct_imaging::derived`, and written to
//! the spool before anyone is told it was accepted.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use dicom_dictionary_std::tags;
use ldct_imaging::derived::{self, DerivedModel, Processing, SeriesLabels};
use ldct_imaging::dicom::parse_dicom_bytes_within;
use ldct_imaging::instance::{self, CtInstance, InstanceError};
use ldct_imaging::limits::SliceLimits;
use ldct_imaging::ImagingError;
use ndarray::Array2;

use super::multipart::MediaType;
use super::spool::{ContentKey, Spool, SpoolError};
use crate::audit::{self, AuditLog, ModelRef, Origin, Record};
use crate::error::ServeError;
use crate::inference::batcher::Batcher;
use crate::inference::model::LoadedModel;
use crate::inference::pipeline;
use crate::inference::pixels::{self, Prepared};

/// Failure Reason (0008,1197) values of a STOW-RS response (PS3.18 / PS3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// 0110: a general failure in processing (decoding, inference, loop guard).
    ProcessingFailure,
    /// 0122: not a CT image (or not an image, or multi-frame).
    SopClassNotSupported,
    /// A700: out of resources (spool full, inference queue full, timeout).
    OutOfResources,
    /// A900: the data set does not match the request (Study Instance UID mismatch).
    DataSetMismatch,
    /// C000: cannot understand (not DICOM, truncated, not an application/dicom part).
    CannotUnderstand,
    /// C122: the transfer syntax is not supported.
    TransferSyntaxNotSupported,
}

impl FailureReason {
    pub fn code(self) -> u16 {
        match self {
            FailureReason::ProcessingFailure => 0x0110,
            FailureReason::SopClassNotSupported => 0x0122,
            FailureReason::OutOfResources => 0xA700,
            FailureReason::DataSetMismatch => 0xA900,
            FailureReason::CannotUnderstand => 0xC000,
            FailureReason::TransferSyntaxNotSupported => 0xC122,
        }
    }

    /// Failures worth retrying later (resources), as opposed to the instance's own.
    pub fn is_transient(self) -> bool {
        self == FailureReason::OutOfResources
    }
}

/// An instance that was not accepted, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub reason: FailureReason,
    /// For people (the STOW-RS response, the job report); never logged at info level.
    pub message: String,
}

impl Rejected {
    pub fn unknown(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            sop_class_uid: None,
            sop_instance_uid: None,
            reason,
            message: message.into(),
        }
    }
}

/// An accepted instance: denoised, and its derived instance safely in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub sop_class_uid: String,
    /// The source's SOP Instance UID.
    pub source_sop_instance_uid: String,
    pub study_instance_uid: Option<String>,
    /// The derived instance's SOP Instance UID and Series Instance UID.
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

fn imaging_reason(e: &ImagingError) -> FailureReason {
    match e {
        ImagingError::NotDicom(_)
        | ImagingError::DicomCorrupt(_)
        | ImagingError::DicomDecode(_) => FailureReason::CannotUnderstand,
        ImagingError::NotAnImage(_) => FailureReason::SopClassNotSupported,
        ImagingError::DicomUnsupported(m) if m.starts_with("transfer syntax") => {
            FailureReason::TransferSyntaxNotSupported
        }
        _ => FailureReason::ProcessingFailure,
    }
}

fn instance_reason(e: &InstanceError) -> FailureReason {
    match e {
        InstanceError::Imaging(e) => imaging_reason(e),
        InstanceError::NotCt { .. } | InstanceError::MultiFrame(_) => {
            FailureReason::SopClassNotSupported
        }
        InstanceError::TooLarge(_) => FailureReason::ProcessingFailure,
    }
}

fn serve_reason(e: &ServeError) -> FailureReason {
    match e {
        ServeError::QueueFull { .. } | ServeError::ShuttingDown | ServeError::Timeout { .. } => {
            FailureReason::OutOfResources
        }
        _ => FailureReason::ProcessingFailure,
    }
}

/// Decodes one part of a STOW-RS request or WADO-RS response: it must be
/// `application/dicom` (or untyped / `application/octet-stream`), a single-frame CT
/// image, of `expected_study` when given, and not made by ldct (loop guard).
pub fn decode_part(
    body: &[u8],
    media_type: Option<&MediaType>,
    expected_study: Option<&str>,
    limits: &SliceLimits,
) -> Result<CtInstance, Rejected> {
    if let Some(mt) = media_type {
        if !matches!(
            mt.essence.as_str(),
            "application/dicom" | "application/octet-stream"
        ) {
            return Err(Rejected::unknown(
                FailureReason::CannotUnderstand,
                format!("the part is {}, not application/dicom", mt.essence),
            ));
        }
    }
    if body.is_empty() {
        return Err(Rejected::unknown(
            FailureReason::CannotUnderstand,
            "the part is empty",
        ));
    }
    let obj = parse_dicom_bytes_within(body, limits.max_data_set_bytes())
        .map_err(|e| Rejected::unknown(imaging_reason(&e), e.to_string()))?;
    let (sop_class_uid, sop_instance_uid) = instance::sop_uids(&obj);
    let reject = |reason, message: String| Rejected {
        sop_class_uid: sop_class_uid.clone(),
        sop_instance_uid: sop_instance_uid.clone(),
        reason,
        message,
    };
    if let Some(want) = expected_study {
        let study = instance::text(&obj, tags::STUDY_INSTANCE_UID);
        if study.as_deref() != Some(want) {
            return Err(reject(
                FailureReason::DataSetMismatch,
                format!(
                    "Study Instance UID {} does not match the study {want} of the request",
                    study.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
    if instance::is_ldct_derived(&obj) {
        return Err(reject(
            FailureReason::ProcessingFailure,
            "already denoised by ldct (Contributing Equipment manufacturer ldct): not denoised \
             again"
                .into(),
        ));
    }
    instance::decode_ct_object(obj, limits).map_err(|e| reject(instance_reason(&e), e.to_string()))
}

/// Queues a source instance unchanged for the PACS (a series rule's pass-through):
/// `file` is its Part 10 bytes, spooled under its own SOP Instance UID.
pub async fn pass_through(
    spool: &Arc<Spool>,
    source: CtInstance,
    file: actix_web::web::Bytes,
) -> Result<Accepted, Rejected> {
    let spool = spool.clone();
    let sop_class = source.meta.sop_class_uid.trim().to_owned();
    let sop = source.meta.sop_instance_uid.trim().to_owned();
    let reject = |reason, message: String| Rejected {
        sop_class_uid: Some(sop_class.clone()),
        sop_instance_uid: Some(sop.clone()),
        reason,
        message,
    };
    let uid = sop.clone();
    let queued = web::block(move || {
        let key = content_key(&source.hu);
        spool.enqueue(&uid, &file, &key).map(|_| source)
    })
    .await;
    match queued {
        Ok(Ok(source)) => Ok(Accepted {
            sop_class_uid: sop_class.clone(),
            source_sop_instance_uid: sop.clone(),
            study_instance_uid: source.meta.study_instance_uid.clone(),
            sop_instance_uid: sop.clone(),
            series_instance_uid: source.meta.series_instance_uid.clone().unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(reject(spool_reason(&e), e.to_string())),
        Err(e) => Err(reject(FailureReason::OutOfResources, e.to_string())),
    }
}

fn spool_reason(e: &SpoolError) -> FailureReason {
    match e {
        SpoolError::Full { .. } | SpoolError::Io(_) => FailureReason::OutOfResources,
        SpoolError::InvalidUid(_) | SpoolError::Conflict(_) => FailureReason::ProcessingFailure,
    }
}

/// The spool's content key of a source slice: a SHA-256 of its HU (shape and values).
fn content_key(hu: &Array2<f32>) -> ContentKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let (rows, cols) = hu.dim();
    h.update((rows as u64).to_le_bytes());
    h.update((cols as u64).to_le_bytes());
    let values: Vec<u8> = hu.iter().flat_map(|v| v.to_le_bytes()).collect();
    h.update(&values);
    h.finalize().into()
}

/// Where [`denoise_and_spool`] runs, writes and records: the inference queue and its
/// timeout, the spool, the derived series' labels and the audit log.
#[derive(Clone, Copy)]
pub struct Spooling<'a> {
    pub batcher: &'a Batcher,
    pub timeout: Duration,
    pub spool: &'a Arc<Spool>,
    pub labels: &'a Arc<SeriesLabels>,
    pub audit: Option<&'a AuditLog>,
}

/// How many slices one chunk queues at once: room for other requests in the queue,
/// several batches' worth.
pub fn chunk_size(batcher: &Batcher) -> usize {
    let cfg = batcher.config();
    (cfg.queue_capacity / 2).min(cfg.max_batch * 4).max(1)
}

/// Denoises `sources` (one chunk: all queued together), writes each derived instance
/// and puts it in the spool. Results are in the order of `sources`. A full inference
/// queue is waited out (up to `timeout`); other failures reject the slices they hit.
///
/// Each slice's outcome goes to the audit log (`--audit-log`) with `origin`.
pub async fn denoise_and_spool(
    to: &Spooling<'_>,
    model: &Arc<LoadedModel>,
    sources: Vec<CtInstance>,
    strength: f32,
    origin: &Origin,
) -> Vec<Result<Accepted, Rejected>> {
    let series: Vec<Option<String>> = sources
        .iter()
        .map(|s| {
            s.meta
                .series_instance_uid
                .as_deref()
                .map(|u| u.trim().to_owned())
        })
        .collect();
    let results = denoise_and_write(to, model, sources, strength).await;
    if let Some(log) = to.audit {
        let time = audit::now();
        let m = ModelRef {
            name: model.name(),
            version: model.version(),
            sha256: &model.manifest.onnx.sha256,
        };
        for (r, series) in results.iter().zip(&series) {
            let (source_sop, derived, outcome, status) = match r {
                Ok(a) => (
                    Some(a.source_sop_instance_uid.as_str()),
                    Some(a),
                    "accepted",
                    None,
                ),
                Err(f) => (
                    f.sop_instance_uid.as_deref(),
                    None,
                    "failed",
                    Some(format!("0x{:04X}", f.reason.code())),
                ),
            };
            log.write(&Record {
                time: time.clone(),
                route: origin.route,
                caller: &origin.caller,
                source_sop_instance_uid: source_sop,
                source_series_instance_uid: series.as_deref(),
                derived_sop_instance_uid: derived.map(|a| a.sop_instance_uid.as_str()),
                derived_series_instance_uid: derived.map(|a| a.series_instance_uid.as_str()),
                model: m.clone(),
                strength,
                outcome,
                status,
            });
        }
    }
    results
}

async fn denoise_and_write(
    to: &Spooling<'_>,
    model: &Arc<LoadedModel>,
    sources: Vec<CtInstance>,
    strength: f32,
) -> Vec<Result<Accepted, Rejected>> {
    let Spooling {
        batcher,
        timeout,
        spool,
        labels,
        ..
    } = *to;
    let n = sources.len();
    let ids: Vec<(Option<String>, Option<String>)> = sources
        .iter()
        .map(|s| {
            (
                Some(s.meta.sop_class_uid.trim().to_owned()),
                Some(s.meta.sop_instance_uid.trim().to_owned()),
            )
        })
        .collect();
    let reject = |i: usize, reason: FailureReason, message: String| Rejected {
        sop_class_uid: ids[i].0.clone(),
        sop_instance_uid: ids[i].1.clone(),
        reason,
        message,
    };

    let m = model.clone();
    // Each source's noise estimate, once: the model's noise map and the derived
    // instance's figures.
    let prepared = web::block(move || {
        let noise: Vec<Option<f32>> = sources
            .iter()
            .map(|s| ldct_imaging::noise::estimate_noise_hu(&s.hu))
            .collect();
        let p: Vec<Result<Prepared, ServeError>> = sources
            .iter()
            .zip(&noise)
            .map(|(s, &n)| {
                pixels::prepare_hu(&s.hu, &m.normaliser, &m.padding())
                    .map(|p| p.with_noise_map(m.noise_map_from(n)))
            })
            .collect();
        (sources, noise, p)
    })
    .await;
    let (sources, noise_in, prepared) = match prepared {
        Ok(v) => v,
        Err(e) => {
            let e = ServeError::from(e);
            return (0..n)
                .map(|i| Err(reject(i, serve_reason(&e), e.to_string())))
                .collect();
        }
    };

    // Every preparable slice of the chunk goes to the batcher at once.
    let ok: Vec<usize> = (0..n).filter(|&i| prepared[i].is_ok()).collect();
    let batch: Vec<Prepared> = ok
        .iter()
        .filter_map(|&i| prepared[i].as_ref().ok().cloned())
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        if strength == 0.0 {
            // The input's pixels as they are: nothing to run.
            break Ok(Vec::new());
        }
        let mut attempt = batch.clone();
        match pipeline::run_prepared(batcher, timeout, model, &mut attempt).await {
            Err(ServeError::QueueFull { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    let mut hu: Vec<Result<Array2<f32>, ServeError>> = prepared
        .iter()
        .map(|p| match p {
            Ok(_) => Err(ServeError::Internal("no output".into())),
            Err(e) => Err(e.clone()),
        })
        .collect();
    match outcome {
        Ok(_) if strength == 0.0 => {
            for &i in &ok {
                hu[i] = Ok(sources[i].hu.clone());
            }
        }
        Ok(outs) => {
            for (k, &i) in ok.iter().enumerate() {
                if let (Some(out), Ok(p)) = (outs.get(k), &prepared[i]) {
                    hu[i] = pixels::finish_hu(out, p, &sources[i].hu, model.compose(strength));
                }
            }
        }
        Err(e) => {
            for &i in &ok {
                hu[i] = Err(e.clone());
            }
        }
    }

    let m = model.clone();
    let spool = spool.clone();
    let labels = labels.clone();
    let written = web::block(move || {
        let dm = DerivedModel {
            name: m.name(),
            version: m.version(),
            sha256: &m.manifest.onnx.sha256,
            strength,
        };
        sources
            .into_iter()
            .zip(hu)
            .zip(noise_in)
            .map(
                |((src, hu), noise_in)| -> Result<Accepted, (FailureReason, String)> {
                    let hu = hu.map_err(|e| (serve_reason(&e), e.to_string()))?;
                    let processing =
                        Processing::now(noise_in, ldct_imaging::noise::estimate_noise_hu(&hu));
                    let d = derived::derive(&src.obj, &src.meta, &hu, dm, &labels, &processing)
                        .map_err(|e| (FailureReason::ProcessingFailure, e.to_string()))?;
                    spool
                        .enqueue(&d.sop_instance_uid, &d.bytes, &content_key(&src.hu))
                        .map_err(|e| (spool_reason(&e), e.to_string()))?;
                    Ok(Accepted {
                        sop_class_uid: d.sop_class_uid,
                        source_sop_instance_uid: src.meta.sop_instance_uid.trim().to_owned(),
                        study_instance_uid: src.meta.study_instance_uid.clone(),
                        sop_instance_uid: d.sop_instance_uid,
                        series_instance_uid: d.series_instance_uid,
                    })
                },
            )
            .collect::<Vec<_>>()
    })
    .await;
    match written {
        Ok(results) => results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|(reason, message)| reject(i, reason, message)))
            .collect(),
        Err(e) => {
            let e = ServeError::from(e);
            (0..n)
                .map(|i| Err(reject(i, FailureReason::OutOfResources, e.to_string())))
                .collect()
        }
    }
}
