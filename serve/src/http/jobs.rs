//! Pull jobs over HTTP: `POST /v1/studies/{StudyInstanceUID}/denoise[?series=UID&model=NAME]`
//! answers 202 with a job; `GET /v1/jobs/{id}` reports it (the jobs themselves:
//! [`crate::jobs`]). Both answer 501 `pacs_not_configured` without `--pacs-url`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use ldct_imaging::instance::is_uid;
use serde::Deserialize;

use super::middleware::only;
use crate::error::ServeError;
use crate::inference::pixels;
use crate::jobs::store::{is_job_id, JobsError};
use crate::state::AppState;

/// The scope of the pull-job routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/v1/studies/{study}/denoise").route(web::post().to(create)),
    ))
    .service(only(
        web::resource("/v1/jobs/{id}").route(web::get().to(get)),
    ));
}

#[derive(Debug, Deserialize)]
pub struct PullQuery {
    pub series: Option<String>,
    pub model: Option<String>,
    /// Denoising strength in [0, 1] (default: the server's `--strength`).
    pub strength: Option<f64>,
}

/// `POST /v1/studies/{StudyInstanceUID}/denoise[?series=UID&model=NAME&strength=S]`:
/// 202 with the job (a new one, or the active one for the same study, series, model
/// and strength) and its
/// `Location`.
pub async fn create(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PullQuery>,
) -> Result<HttpResponse, ServeError> {
    let dw = state
        .dicomweb
        .clone()
        .filter(|dw| dw.pacs.is_some())
        .ok_or(ServeError::PacsNotConfigured)?;
    let study = path.into_inner();
    if !is_uid(&study) {
        return Err(ServeError::BadRequest(format!(
            "{study:?} is not a valid Study Instance UID"
        )));
    }
    let series = query.series.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = series {
        if !is_uid(s) {
            return Err(ServeError::BadRequest(format!(
                "series={s:?} is not a valid Series Instance UID"
            )));
        }
    }
    let model = state.registry.get(query.model.as_deref())?;
    let strength = match query.strength {
        Some(v) => pixels::check_strength(v)?,
        None => state.strength,
    };
    let (job, created) = dw
        .jobs
        .submit(&study, series, model.name(), strength)
        .map_err(|e| match e {
            JobsError::TooManyActive { max } => ServeError::TooManyJobs { max },
            e => ServeError::Internal(e.to_string()),
        })?;
    if created {
        tracing::info!(job = %job.id, model = model.name(), "pull job queued");
    }
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/jobs/{}", job.id)))
        .json(job.view()))
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ServeError> {
    let dw = state
        .dicomweb
        .clone()
        .ok_or(ServeError::PacsNotConfigured)?;
    let id = path.into_inner();
    let job = is_job_id(&id)
        .then(|| dw.jobs.get(&id))
        .flatten()
        .ok_or_else(|| ServeError::NotFound(format!("no job {id:?}")))?;
    Ok(HttpResponse::Ok().json(job.view()))
}
