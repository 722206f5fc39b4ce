//! STOW-RS receiver: `POST /dicomweb/studies[/{StudyInstanceUID}]`.
//!
//! The body is `multipart/related; type="application/dicom"` with one instance per part.
//! Each CT instance is denoised (the `/v1/denoise` pipeline: registry, batcher, derived
//! DICOM writer) and its derived instance written to the spool, from where it is pushed
//! to the PACS. The answer is the PS3.18 Store Instances Response
//! ([`crate::dicomweb::report`]). A body that is not valid multipart is 400
//! `invalid_multipart`, not multipart/related or not of type application/dicom 415, too
//! large 413 — the JSON errors of the rest of the API.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use ldct_imaging::instance::is_uid;
use serde::Deserialize;

use super::extract::read_body;
use super::middleware::only;
use crate::audit::Origin;
use crate::dicomweb::multipart::{self, MultipartError};
use crate::dicomweb::process;
use crate::dicomweb::report::{StowReport, DICOM_JSON};
use crate::dicomweb::rules::Verdict;
use crate::error::{ServeError, RETRY_AFTER_SECS};
use crate::metrics::metrics;
use crate::state::AppState;

/// Most parts in one STOW-RS request.
pub const MAX_PARTS: usize = 10_000;

/// The scope of the DICOMweb routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/dicomweb/studies").route(web::post().to(store)),
    ))
    .service(only(
        web::resource("/dicomweb/studies/{study}").route(web::post().to(store_study)),
    ));
}

#[derive(Debug, Deserialize)]
pub struct StowQuery {
    pub model: Option<String>,
    /// Denoising strength in [0, 1] (default: the server's `--strength`).
    pub strength: Option<f64>,
}

fn multipart_error(e: MultipartError) -> ServeError {
    match e {
        MultipartError::NotMultipart(ct, _) => ServeError::UnsupportedMediaType(format!(
            "Content-Type {:?}: STOW-RS needs multipart/related; type=\"application/dicom\"",
            if ct.is_empty() { "none" } else { &ct }
        )),
        e => ServeError::InvalidMultipart(e.to_string()),
    }
}

/// `POST /dicomweb/studies`.
pub async fn store(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<StowQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    receive(req, state, query.into_inner(), None, payload).await
}

/// `POST /dicomweb/studies/{StudyInstanceUID}`: instances of another study fail with
/// Failure Reason A900.
pub async fn store_study(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StowQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    let study = path.into_inner();
    if !is_uid(&study) {
        return Err(ServeError::BadRequest(format!(
            "{study:?} is not a valid Study Instance UID"
        )));
    }
    receive(req, state, query.into_inner(), Some(study), payload).await
}

async fn receive(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: StowQuery,
    study: Option<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    let dw = state
        .dicomweb
        .clone()
        .ok_or(ServeError::PacsNotConfigured)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (media_type, boundary) = multipart::related(content_type).map_err(multipart_error)?;
    if let Some(t) = media_type.param("type") {
        if !t.eq_ignore_ascii_case("application/dicom") {
            return Err(ServeError::UnsupportedMediaType(format!(
                "multipart/related of type {t:?}: ldct stores binary instances, \
                 type=\"application/dicom\""
            )));
        }
    }
    let model = state.registry.get(query.model.as_deref())?;
    let strength = match query.strength {
        Some(v) => crate::inference::pixels::check_strength(v)?,
        None => state.strength,
    };
    let (body, _held) = read_body(&req, payload, dw.max_body_bytes, &state.limits).await?;
    if body.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    let parts = multipart::parse(&body, &boundary, MAX_PARTS).map_err(multipart_error)?;
    let origin = Origin::new(
        "stow-rs",
        req.peer_addr()
            .map_or_else(|| "unknown".into(), |a| a.to_string()),
    );

    let mut report = StowReport::default();
    let chunk = process::chunk_size(&state.batcher);
    let mut parts = parts.into_iter().peekable();
    while parts.peek().is_some() {
        let batch: Vec<_> = parts.by_ref().take(chunk).collect();
        let expected = study.clone();
        let slice = state.limits.slice;
        let (batch, decoded) = web::block(move || {
            let decoded = batch
                .iter()
                .map(|p| {
                    process::decode_part(
                        &p.body,
                        p.media_type().as_ref(),
                        expected.as_deref(),
                        &slice,
                    )
                })
                .collect::<Vec<_>>();
            (batch, decoded)
        })
        .await?;
        let mut sources = Vec::new();
        for (part, d) in batch.into_iter().zip(decoded) {
            let s = match d {
                Ok(s) => s,
                Err(r) => {
                    report.failed.push(r);
                    continue;
                }
            };
            match dw.rules.verdict(&s.obj) {
                Verdict::Denoise => sources.push(s),
                Verdict::Pass(why) => {
                    tracing::debug!(%why, "STOW-RS instance passed through unchanged");
                    match process::pass_through(&dw.spool, s, part.body).await {
                        Ok(a) => report.accepted.push(a),
                        Err(f) => report.failed.push(f),
                    }
                }
                Verdict::Refuse(why) => report.failed.push(process::Rejected {
                    sop_class_uid: Some(s.meta.sop_class_uid.trim().to_owned()),
                    sop_instance_uid: Some(s.meta.sop_instance_uid.trim().to_owned()),
                    reason: process::FailureReason::ProcessingFailure,
                    message: format!("refused by a series rule: {why}"),
                }),
            }
        }
        if sources.is_empty() {
            continue;
        }
        for r in process::denoise_and_spool(
            &state.spooling(&dw.spool),
            &model,
            sources,
            strength,
            &origin,
        )
        .await
        {
            match r {
                Ok(a) => report.accepted.push(a),
                Err(f) => report.failed.push(f),
            }
        }
    }

    let m = metrics();
    m.stow_instances
        .with_label_values(&["accepted"])
        .inc_by(report.accepted.len() as u64);
    m.stow_instances
        .with_label_values(&["failed"])
        .inc_by(report.failed.len() as u64);
    for f in &report.failed {
        tracing::debug!(
            sop = f.sop_instance_uid.as_deref().unwrap_or("?"),
            reason = format!("0x{:04X}", f.reason.code()),
            message = %f.message,
            "STOW-RS instance failed"
        );
    }
    tracing::info!(
        accepted = report.accepted.len(),
        failed = report.failed.len(),
        model = model.name(),
        "STOW-RS request"
    );
    let status = report.status();
    let mut res = HttpResponse::build(status);
    res.content_type(DICOM_JSON);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
    }
    // A RetrieveURL only where the derived instances go by STOW-RS.
    let stow_pacs = match &dw.target {
        crate::dicomweb::push::PushTarget::Stow(p) => Some(p),
        crate::dicomweb::push::PushTarget::Dimse(_) => None,
    };
    Ok(res.body(report.to_json(stow_pacs).to_string()))
}
