//! The actix-web application: shared state, routes, the metrics + auth middleware and
//! request-body helpers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::batcher::Batcher;
use crate::dicomweb::stow;
use crate::error::ServeError;
use crate::metrics::metrics;
use crate::registry::Registry;
use crate::{jobs, v1, v2};

/// Limits and policies of the HTTP layer.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub api_token: Option<Arc<str>>,
}

/// Everything a handler needs (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub batcher: Arc<Batcher>,
    pub limits: Limits,
    /// STOW-RS, the spool to the PACS and pull jobs (with `--pacs-url`).
    pub dicomweb: Option<Arc<crate::dicomweb::DicomWeb>>,
}

/// Paths open without a token: liveness / readiness probes and the metrics scrape.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready" | "/metrics")
}

/// Constant-time comparison of the presented bearer token.
pub fn bearer_ok(headers: &header::HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, presented)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (presented.trim().as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Decrements the in-flight gauge even when the request future is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics().in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.dec();
    }
}

fn record(route: &str, method: &str, status: StatusCode, kind: Option<String>, started: Instant) {
    let m = metrics();
    m.requests
        .with_label_values(&[route, method, status.as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    if status.is_client_error() || status.is_server_error() {
        let kind = kind.unwrap_or_else(|| format!("http_{}", status.as_u16()));
        m.errors.with_label_values(&[kind.as_str()]).inc();
    }
}

/// A bounded label for the method (extension methods are "other").
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn error_kind(e: &actix_web::Error) -> Option<String> {
    e.as_error::<ServeError>().map(|e| e.code().to_owned())
}

/// The application (one per HTTP worker).
pub fn app(
    state: AppState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let token = state.limits.api_token.clone();
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ServeError::BadRequest(format!("invalid query string: {e}")).into()
        }))
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ServeError::BadRequest(format!("invalid path: {e}")).into()),
        )
        .wrap_fn(move |req, srv| {
            let started = Instant::now();
            let guard = InFlight::enter();
            // The route pattern (not the raw path: bounded label values).
            let route = req
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            let method = method_label(req.method());
            let denied = token
                .as_deref()
                .is_some_and(|t| !is_public(req.path()) && !bearer_ok(req.headers(), t));
            let call = if denied {
                Err(req.into_response(HttpResponse::from_error(ServeError::Unauthorized)))
            } else {
                Ok(srv.call(req))
            };
            async move {
                let result = match call {
                    Err(denied) => Ok(denied),
                    Ok(fut) => fut.await.map(ServiceResponse::map_into_boxed_body),
                };
                match &result {
                    Ok(res) => record(
                        &route,
                        method,
                        res.status(),
                        res.response().error().and_then(error_kind),
                        started,
                    ),
                    Err(e) => record(
                        &route,
                        method,
                        e.as_response_error().status_code(),
                        error_kind(e),
                        started,
                    ),
                }
                drop(guard);
                result
            }
        })
        .configure(routes)
        .default_service(web::to(not_found))
}

fn routes(cfg: &mut web::ServiceConfig) {
    let only = |r: actix_web::Resource| r.default_service(web::to(method_not_allowed));
    cfg.service(only(
        web::resource("/metrics").route(web::get().to(metrics_text)),
    ))
    .service(only(
        web::resource("/v1/denoise").route(web::post().to(v1::denoise)),
    ))
    .service(only(
        web::resource("/v1/evaluate").route(web::post().to(v1::evaluate)),
    ))
    .service(only(
        web::resource("/v1/models").route(web::get().to(v1::models)),
    ))
    .service(only(
        web::resource("/v1/studies/{study}/denoise").route(web::post().to(jobs::create)),
    ))
    .service(only(
        web::resource("/v1/jobs/{id}").route(web::get().to(jobs::get)),
    ))
    .service(only(
        web::resource("/dicomweb/studies").route(web::post().to(stow::store)),
    ))
    .service(only(
        web::resource("/dicomweb/studies/{study}").route(web::post().to(stow::store_study)),
    ))
    .service(only(
        web::resource("/v1/models/reload").route(web::post().to(v1::reload)),
    ))
    .service(only(
        web::resource("/v2").route(web::get().to(v2::server_metadata)),
    ))
    .service(only(
        web::resource("/v2/health/live").route(web::get().to(v2::live)),
    ))
    .service(only(
        web::resource("/v2/health/ready").route(web::get().to(v2::ready)),
    ))
    .service(only(
        web::resource("/v2/models/{model}").route(web::get().to(v2::model_metadata)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}")
            .route(web::get().to(v2::model_metadata_version)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/ready").route(web::get().to(v2::model_ready)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}/ready")
            .route(web::get().to(v2::model_ready_version)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/infer").route(web::post().to(v2::infer)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}/infer")
            .route(web::post().to(v2::infer_version)),
    ));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ServeError> {
    Err(ServeError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed() -> Result<HttpResponse, ServeError> {
    Err(ServeError::MethodNotAllowed)
}

async fn metrics_text() -> Result<HttpResponse, ServeError> {
    let text = metrics().render().map_err(ServeError::Internal)?;
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text))
}

/// The media type of a request without parameters, lower case (`""` when absent).
pub fn media_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads the whole body, refusing more than `limit` bytes (413) — early from the
/// Content-Length when it is declared.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ServeError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ServeError::PayloadTooLarge { limit });
    }
    let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ServeError::BadRequest(format!("cannot read the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ServeError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
