//! Request extraction shared by the protocol modules: the query-string and path
//! extractors' errors (in the body form of the route), the media type and the whole
//! body under a size limit.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::budget::Reservation;
use crate::error::{self, ServeError};
use crate::state::Limits;

/// Query-string errors as `bad_request`, in the route's body form.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, req| {
        error::for_path(
            ServeError::BadRequest(format!("invalid query string: {e}")),
            req.path(),
        )
    })
}

/// Path-segment errors as `bad_request`, in the route's body form.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|e, req| {
        error::for_path(
            ServeError::BadRequest(format!("invalid path: {e}")),
            req.path(),
        )
    })
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

/// Most bytes reserved up front from a declared Content-Length (the client's word, not
/// yet the data): larger bodies grow the buffer as bytes actually arrive.
const MAX_PRESIZE: usize = 1 << 20;

/// Reads the whole body, refusing more than `limit` bytes (413; early from the
/// Content-Length when it is declared), a body not received within `--body-timeout`
/// (408) and a body the server-wide budget (`--max-inflight-bytes`) cannot hold (503,
/// before any byte is read when the length is declared): every byte counts, headers of
/// multipart parts included. The reservation must be held until the request's work is
/// done.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    limits: &Limits,
) -> Result<(web::Bytes, Reservation), ServeError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ServeError::PayloadTooLarge { limit });
    }
    let mut held = limits.body_budget.reservation();
    held.grow_to(declared.unwrap_or(0))?;
    let capacity = declared.unwrap_or(0).min(MAX_PRESIZE);
    let timeout = limits.body_timeout;
    let body = tokio::time::timeout(timeout, collect(payload, limit, capacity, &mut held))
        .await
        .map_err(|_| ServeError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        })??;
    Ok((body, held))
}

async fn collect(
    mut payload: web::Payload,
    limit: usize,
    capacity: usize,
    held: &mut Reservation,
) -> Result<web::Bytes, ServeError> {
    let mut buf = web::BytesMut::with_capacity(capacity);
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ServeError::BadRequest(format!("cannot read the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ServeError::PayloadTooLarge { limit });
        }
        held.grow_to(buf.len() + chunk.len())?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
