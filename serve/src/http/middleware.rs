//! The middleware of every route: the bearer token (`--api-token`), the request
//! metrics (count, duration, in flight, errors by code), and the request id: taken
//! from the caller's `x-request-id` when it is a plain token, else made here; returned
//! in the response's `x-request-id`, and the `request_id` field of the request's span,
//! so every log line written while handling it carries it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use tracing::Instrument;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::error::{self, ServeError};
use crate::metrics::metrics;
use crate::state::AppState;

/// Paths open without a token: liveness / readiness probes, the metrics scrape and the
/// web page's files (a browser cannot send a bearer token when it navigates; the page
/// asks for the token and sends it to the API itself).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/v2/health/live" | "/v2/health/ready" | "/metrics" | "/" | "/ui"
    ) || path.starts_with("/ui/")
}

/// Constant-time comparison of the presented bearer token.
pub fn bearer_ok(headers: &header::HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|value| authorization_ok(value, token))
}

/// An `Authorization` value (HTTP header or gRPC metadata) that presents `token` as
/// `Bearer <token>`, compared in constant time.
pub fn authorization_ok(value: &str, token: &str) -> bool {
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

/// A resource that answers 405 `method_not_allowed` to the methods it has no route for.
pub fn only(r: actix_web::Resource) -> actix_web::Resource {
    r.default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    Err(error::for_path(ServeError::MethodNotAllowed, req.path()))
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

fn record(route: &str, method: &str, status: StatusCode, kind: Option<&str>, started: Instant) {
    let m = metrics();
    m.requests
        .with_label_values(&[route, method, status.as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    if status.is_client_error() || status.is_server_error() {
        let fallback = format!("http_{}", status.as_u16());
        m.errors
            .with_label_values(&[kind.unwrap_or(&fallback)])
            .inc();
    }
}

/// The request id header (in and out).
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's request id when it is 1 to 64 characters of `[A-Za-z0-9._:-]` (so it
/// cannot forge log lines or carry much), else a new one: a per-process prefix and a
/// counter, `<8 hex>-<counter>`.
pub fn request_id(headers: &header::HeaderMap) -> String {
    if let Some(id) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        let ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            return id.to_owned();
        }
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        nanos ^ std::process::id().rotate_left(16)
    });
    format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
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

/// The bearer token check (`--api-token`, from the state) and the request metrics,
/// around every request (`actix_web::middleware::from_fn`).
pub async fn guard_and_measure(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let guard = InFlight::enter();
    // The route pattern (not the raw path: bounded label values).
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let token = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.limits.api_token.clone());
    let denied = token
        .as_deref()
        .is_some_and(|t| !is_public(req.path()) && !bearer_ok(req.headers(), t));
    let request_id = request_id(req.headers());
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut res = if denied {
        let e = error::for_path(ServeError::Unauthorized, req.path());
        req.into_response(HttpResponse::from_error(e))
    } else {
        match next.call(req).instrument(span.clone()).await {
            Ok(res) => res.map_into_boxed_body(),
            // Handlers' and extractors' errors arrive as responses; an error here comes
            // from the service stack itself and is answered by actix (without the id).
            Err(e) => {
                record(
                    &route,
                    method,
                    e.as_response_error().status_code(),
                    error::code_of(&e),
                    started,
                );
                span.in_scope(|| tracing::warn!(method, %route, error = %e, "request failed"));
                drop(guard);
                return Err(e);
            }
        }
    };
    let status = res.status();
    record(
        &route,
        method,
        status,
        res.response().error().and_then(error::code_of),
        started,
    );
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID), v);
    }
    // The route pattern, never the path (it may hold study UIDs): no patient data.
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if is_public(&route) {
            tracing::debug!(method, %route, status = status.as_u16(), ms, "request");
        } else {
            tracing::info!(method, %route, status = status.as_u16(), ms, "request");
        }
    });
    drop(guard);
    Ok(res)
}
