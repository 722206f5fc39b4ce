//! The Open Inference Protocol's model repository extension (Triton's and KServe's
//! `v2/repository` routes), by model name:
//!
//! - `POST /v2/repository/index`: every model folder under `--models` with its version
//!   and state (`READY`, or `UNAVAILABLE` with the reason); body `{"ready": true}`
//!   lists the ready ones only;
//! - `POST /v2/repository/models/{model}/load`: re-scans that model's folders and
//!   serves them (new and changed versions loaded and warmed up first; other models
//!   untouched); 200 `{}`, 404 when no folder holds the model, 400 when it fails;
//! - `POST /v2/repository/models/{model}/unload`: stops serving every version of it
//!   until it is loaded again (requests already running finish).
//!
//! Loading runs on the blocking pool: the HTTP workers keep serving meanwhile.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::middleware::only;
use crate::error::{OipError, ServeError};
use crate::inference::registry::{Registry, ReloadReport};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/v2/repository/index").route(web::post().to(index)),
    ))
    .service(only(
        web::resource("/v2/repository/models/{model}/load").route(web::post().to(load)),
    ))
    .service(only(
        web::resource("/v2/repository/models/{model}/unload").route(web::post().to(unload)),
    ));
}

#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// A small optional JSON body (the index filter; load and unload parameters, which are
/// accepted and not used).
fn parse_small<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OipError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| OipError(ServeError::BadRequest(format!("invalid JSON body: {e}"))))
}

/// At most 64 KiB: these bodies carry a flag or two.
const MAX_BODY: usize = 64 << 10;

async fn small_body(payload: web::Payload) -> Result<web::Bytes, OipError> {
    payload
        .to_bytes_limited(MAX_BODY)
        .await
        .map_err(|_| OipError(ServeError::PayloadTooLarge { limit: MAX_BODY }))?
        .map_err(|e| OipError(ServeError::BadRequest(format!("reading the body: {e}"))))
}

async fn index(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    let req: IndexRequest = parse_small(&small_body(payload).await?)?;
    let list: Vec<_> = state
        .registry
        .index()
        .iter()
        .filter(|e| !req.ready || e.state == "READY")
        .cloned()
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Debug, Default, Deserialize)]
struct LoadRequest {
    #[serde(default)]
    #[allow(dead_code)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

async fn load(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    change(state, path, payload, Registry::load).await
}

async fn unload(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    change(state, path, payload, Registry::unload).await
}

/// Runs a repository change (load or unload of the model named in the path) on the
/// blocking pool; 200 `{}` when it took.
async fn change(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
    op: fn(&Registry, &str) -> Result<ReloadReport, ServeError>,
) -> Result<HttpResponse, OipError> {
    let _: LoadRequest = parse_small(&small_body(payload).await?)?;
    let name = path.into_inner();
    let registry = state.registry.clone();
    let report = web::block(move || op(&registry, &name)).await??;
    tracing::info!(
        loaded = report.loaded.len(),
        unchanged = report.unchanged.len(),
        removed = report.removed.len(),
        "repository change"
    );
    Ok(HttpResponse::Ok().json(json!({})))
}
