//! The middleware of every route: the bearer token (`--api-token`) and the request
//! metrics (count, duration, in flight, errors by code).

use std::time::Instant;

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
    let result = if denied {
        let e = error::for_path(ServeError::Unauthorized, req.path());
        Ok(req.into_response(HttpResponse::from_error(e)))
    } else {
        next.call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body)
    };
    match &result {
        Ok(res) => record(
            &route,
            method,
            res.status(),
            res.response().error().and_then(error::code_of),
            started,
        ),
        Err(e) => record(
            &route,
            method,
            e.as_response_error().status_code(),
            error::code_of(e),
            started,
        ),
    }
    drop(guard);
    result
}
