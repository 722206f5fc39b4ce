//! The HTTP layer: [`app`] composes the application from the middleware, the
//! extractor settings and one module per protocol, each `configure`-ing its own routes:
//!
//! - [`v1`]: `POST /v1/denoise`, `POST /v1/evaluate`, `GET /v1/models`,
//!   `POST /v1/models/reload`;
//! - [`oip`]: the Open Inference Protocol REST API under `/v2` (its tensor bodies and
//!   the binary extension: [`tensor`]; the model repository extension:
//!   [`repository`]);
//! - [`dicomweb`]: STOW-RS, `POST /dicomweb/studies[/{study}]`;
//! - [`jobs`]: pull jobs, `POST /v1/studies/{study}/denoise`, `GET /v1/jobs/{id}`;
//! - [`ops`]: `GET /metrics`;
//! - [`ui`]: the web page, `GET /` and `/ui` (redirects), `/ui/` and its files.
//!
//! [`middleware`] holds the bearer token check and the request metrics, [`extract`] the
//! extractor settings and body helpers. Errors: [`crate::error`] (the OIP scope answers
//! in the protocol's form).

pub mod dicomweb;
pub mod extract;
pub mod jobs;
pub mod middleware;
pub mod oip;
pub mod ops;
pub mod repository;
pub mod tensor;
pub mod ui;
pub mod v1;

use actix_web::body::BoxBody;
use actix_web::dev::ServiceResponse;
use actix_web::{web, App, HttpRequest, HttpResponse};

use crate::error::{self, ServeError};
use crate::state::AppState;

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
    App::new()
        .app_data(web::Data::new(state))
        .app_data(extract::query_config())
        .app_data(extract::path_config())
        .wrap(actix_web::middleware::from_fn(
            middleware::guard_and_measure,
        ))
        .configure(ops::configure)
        .configure(v1::configure)
        .configure(jobs::configure)
        .configure(dicomweb::configure)
        .configure(oip::configure)
        .configure(repository::configure)
        .configure(ui::configure)
        .default_service(web::to(not_found))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    Err(error::for_path(
        ServeError::NotFound(format!("no route for {} {}", req.method(), req.path())),
        req.path(),
    ))
}
