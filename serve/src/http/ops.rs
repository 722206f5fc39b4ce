//! Operations routes: `GET /metrics` (Prometheus text format, no token needed).

use actix_web::{web, HttpResponse};

use super::middleware::only;
use crate::error::ServeError;
use crate::metrics::{metrics, CONTENT_TYPE};

/// The scope of the operations routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/metrics").route(web::get().to(metrics_text)),
    ));
}

async fn metrics_text() -> Result<HttpResponse, ServeError> {
    let text = metrics().render().map_err(ServeError::Internal)?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
