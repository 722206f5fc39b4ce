//! STOW-RS receiver: `POST /dicomweb/studies[/{StudyInstanceUID}]`.
//!
//! The body is `multipart/related; type="application/dicom"` with one instance per part.
//! Each CT instance is denoised (the `/v1/denoise` pipeline: registry, batcher, derived
//! DICOM writer) and its derived instance written to the spool, from where it is pushed
//! to the PACS. The answer is the PS3.18 Store Instances Response
//! (`application/dicom+json`):
//!
//! - Referenced SOP Sequence (0008,1199): the received instances that were accepted,
//!   each with its Retrieve URL (0008,1190) — where the *derived* instance will be on
//!   the PACS — and, in the private block `ldct` (0009,0010), the derived SOP Instance
//!   UID (0009,1002) and Series Instance UID (0009,1003);
//! - Failed SOP Sequence (0008,1198): the others, with Failure Reason (0008,1197) and a
//!   human-readable reason (0009,1001).
//!
//! Status: 200 all accepted; 202 some; 409 none; 503 (with `Retry-After`) none, all for
//! lack of resources (spool or inference queue full). A body that is not valid
//! multipart is 400 `invalid_multipart`, not multipart/related or not of type
//! application/dicom 415, too large 413 — the JSON errors of the rest of the API.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::client::PacsConfig;
use super::multipart::{self, MultipartError};
use super::process::{self, Accepted, Rejected};
use crate::app::{read_body, AppState};
use crate::error::{ServeError, RETRY_AFTER_SECS};
use crate::instance::is_uid;
use crate::metrics::metrics;

pub const DICOM_JSON: &str = "application/dicom+json";
/// Private creator of ldct's attributes in group 0009.
pub const PRIVATE_CREATOR: &str = "ldct";
/// Most parts in one STOW-RS request.
pub const MAX_PARTS: usize = 10_000;

#[derive(Debug, Deserialize)]
pub struct StowQuery {
    pub model: Option<String>,
}

/// The outcome of a STOW-RS request, instance by instance.
#[derive(Debug, Default)]
pub struct StowReport {
    pub accepted: Vec<Accepted>,
    pub failed: Vec<Rejected>,
}

fn attr(vr: &str, value: Value) -> Value {
    json!({"vr": vr, "Value": [value]})
}

fn private_creator(item: &mut Map<String, Value>) {
    item.insert("00090010".into(), attr("LO", json!(PRIVATE_CREATOR)));
}

impl StowReport {
    /// 200 all accepted, 202 some, 409 none, 503 none and all for lack of resources.
    pub fn status(&self) -> StatusCode {
        match (self.accepted.is_empty(), self.failed.is_empty()) {
            (false, true) => StatusCode::OK,
            (false, false) => StatusCode::ACCEPTED,
            (true, _)
                if !self.failed.is_empty()
                    && self.failed.iter().all(|f| f.reason.is_transient()) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            (true, _) => StatusCode::CONFLICT,
        }
    }

    /// The Store Instances Response data set in the DICOM JSON model.
    pub fn to_json(&self, pacs: Option<&PacsConfig>) -> Value {
        let mut root = Map::new();
        let studies: std::collections::BTreeSet<&str> = self
            .accepted
            .iter()
            .filter_map(|a| a.study_instance_uid.as_deref())
            .collect();
        if let (Some(p), [study]) = (pacs, studies.iter().collect::<Vec<_>>().as_slice()) {
            root.insert("00081190".into(), attr("UR", json!(p.study_url(study))));
        }
        if !self.failed.is_empty() {
            let items: Vec<Value> = self
                .failed
                .iter()
                .map(|f| {
                    let mut item = Map::new();
                    if let Some(c) = &f.sop_class_uid {
                        item.insert("00081150".into(), attr("UI", json!(c)));
                    }
                    if let Some(s) = &f.sop_instance_uid {
                        item.insert("00081155".into(), attr("UI", json!(s)));
                    }
                    item.insert("00081197".into(), attr("US", json!(f.reason.code())));
                    private_creator(&mut item);
                    item.insert("00091001".into(), attr("LT", json!(f.message)));
                    Value::Object(item)
                })
                .collect();
            root.insert("00081198".into(), json!({"vr": "SQ", "Value": items}));
        }
        if !self.accepted.is_empty() {
            let items: Vec<Value> = self
                .accepted
                .iter()
                .map(|a| {
                    let mut item = Map::new();
                    item.insert("00081150".into(), attr("UI", json!(a.sop_class_uid)));
                    item.insert(
                        "00081155".into(),
                        attr("UI", json!(a.source_sop_instance_uid)),
                    );
                    if let (Some(p), Some(study)) = (pacs, &a.study_instance_uid) {
                        item.insert(
                            "00081190".into(),
                            attr(
                                "UR",
                                json!(p.instance_url(
                                    study,
                                    &a.series_instance_uid,
                                    &a.sop_instance_uid
                                )),
                            ),
                        );
                    }
                    private_creator(&mut item);
                    item.insert("00091002".into(), attr("UI", json!(a.sop_instance_uid)));
                    item.insert("00091003".into(), attr("UI", json!(a.series_instance_uid)));
                    Value::Object(item)
                })
                .collect();
            root.insert("00081199".into(), json!({"vr": "SQ", "Value": items}));
        }
        Value::Object(root)
    }
}

fn multipart_error(e: MultipartError) -> ServeError {
    match e {
        MultipartError::NotMultipart(ct) => ServeError::UnsupportedMediaType(format!(
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
    let body = read_body(&req, payload, dw.max_body_bytes).await?;
    if body.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    let parts = multipart::parse(&body, &boundary, MAX_PARTS).map_err(multipart_error)?;

    let mut report = StowReport::default();
    let chunk = process::chunk_size(&state.batcher);
    let mut parts = parts.into_iter().peekable();
    while parts.peek().is_some() {
        let batch: Vec<_> = parts.by_ref().take(chunk).collect();
        let expected = study.clone();
        let decoded = web::block(move || {
            batch
                .iter()
                .map(|p| {
                    process::decode_part(&p.body, p.media_type().as_ref(), expected.as_deref())
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut sources = Vec::new();
        for d in decoded {
            match d {
                Ok(s) => sources.push(s),
                Err(r) => report.failed.push(r),
            }
        }
        if sources.is_empty() {
            continue;
        }
        for r in process::denoise_and_spool(
            &state.batcher,
            state.limits.request_timeout,
            &dw.spool,
            &model,
            sources,
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
    Ok(res.body(report.to_json(Some(&dw.pacs)).to_string()))
}
