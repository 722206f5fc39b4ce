//! `/v1`: denoise (DICOM or .npy), evaluate, model listing and reload.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use ldct_imaging::derived::{self, DerivedModel, Processing};
use ldct_imaging::dicom::{DefaultDicomObject, DicomMeta};
use ldct_imaging::instance::{self, CtInstance};
use ldct_imaging::limits::SliceLimits;
use ldct_imaging::metrics::{quality, Quality};
use ldct_imaging::noise::estimate_noise_hu;
use ldct_imaging::npy::{self, NpyDtype};
use ldct_imaging::Window;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::extract::{media_type, read_body};
use super::middleware::only;
use crate::dicomweb::multipart::{self, MultipartError};
use crate::error::ServeError;
use crate::inference::model::LoadedModel;
use crate::inference::{pipeline, pixels};
use crate::metrics::metrics;
use crate::state::AppState;

pub const DICOM: &str = "application/dicom";
pub const NPY: &str = "application/x-npy";

/// Response headers of `/v1/denoise`.
pub const H_MODEL: &str = "x-ldct-model";
pub const H_VERSION: &str = "x-ldct-model-version";
pub const H_DEVICE: &str = "x-ldct-device";
pub const H_NOISE_IN: &str = "x-ldct-noise-in-hu";
pub const H_NOISE_OUT: &str = "x-ldct-noise-out-hu";
pub const H_SOP: &str = "x-ldct-sop-instance-uid";
pub const H_SERIES: &str = "x-ldct-series-instance-uid";
pub const H_STRENGTH: &str = "x-ldct-strength";

/// The scope of the `/v1` routes (pull jobs: [`super::jobs`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/v1/denoise").route(web::post().to(denoise)),
    ))
    .service(only(
        web::resource("/v1/evaluate").route(web::post().to(evaluate)),
    ))
    .service(only(
        web::resource("/v1/models").route(web::get().to(models)),
    ))
    .service(only(
        web::resource("/v1/models/reload").route(web::post().to(reload)),
    ));
}

#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    pub model: Option<String>,
    /// Denoising strength in [0, 1] (default: the server's `--strength`).
    pub strength: Option<f64>,
}

impl ModelQuery {
    /// The request's strength, or the server's default.
    fn strength(&self, state: &AppState) -> Result<f32, ServeError> {
        match self.strength {
            Some(v) => pixels::check_strength(v),
            None => Ok(state.strength),
        }
    }
}

/// A decoded CT slice from an upload.
struct Slice {
    hu: Array2<f32>,
    dicom: Option<(DefaultDicomObject, DicomMeta)>,
}

/// Decodes a .npy body: float32 or int16 HU, 2-D.
/// Dtype, dimensions and size are checked from the header before the data is decoded.
fn decode_npy(bytes: &[u8], limits: &SliceLimits) -> Result<Array2<f32>, ServeError> {
    let head = npy::header(bytes)?;
    if !matches!(head.dtype, NpyDtype::F32 | NpyDtype::I16) {
        return Err(ServeError::UnsupportedDtype(format!(
            ".npy dtype {}; send float32 or int16 HU",
            head.dtype.name()
        )));
    }
    let &[rows, cols] = head.shape.as_slice() else {
        return Err(ServeError::UnsupportedShape(format!(
            ".npy shape {:?}: send one slice as a 2-D array [H, W]",
            head.shape
        )));
    };
    limits.check(rows, cols)?;
    let img = npy::parse(bytes)?.into_image()?;
    if !img.iter().all(|v| v.is_finite()) {
        return Err(ServeError::NonFinite);
    }
    Ok(img)
}

/// Decodes a DICOM body: a single-frame CT image.
fn decode_dicom(bytes: &[u8], limits: &SliceLimits) -> Result<Slice, ServeError> {
    let CtInstance { obj, meta, hu } = instance::decode_ct(bytes, limits)?;
    Ok(Slice {
        hu,
        dicom: Some((obj, meta)),
    })
}

/// Sniffs an uploaded part: .npy by its magic, anything else as DICOM.
fn decode_any(bytes: &[u8], limits: &SliceLimits) -> Result<Slice, ServeError> {
    if bytes.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    if bytes.starts_with(b"\x93NUMPY") {
        Ok(Slice {
            hu: decode_npy(bytes, limits)?,
            dicom: None,
        })
    } else {
        decode_dicom(bytes, limits)
    }
}

fn noise_header(v: Option<f32>) -> HeaderValue {
    match v {
        Some(s) => {
            HeaderValue::from_str(&format!("{s:.3}")).unwrap_or(HeaderValue::from_static("unknown"))
        }
        None => HeaderValue::from_static("unknown"),
    }
}

fn text_header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("invalid"))
}

/// `POST /v1/denoise?model=NAME`.
pub async fn denoise(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ModelQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    let kind = media_type(&req);
    let is_dicom = match kind.as_str() {
        DICOM => true,
        NPY | "application/npy" => false,
        other => {
            return Err(ServeError::UnsupportedMediaType(format!(
                "Content-Type {:?}: send {DICOM} or {NPY}",
                if other.is_empty() { "none" } else { other }
            )))
        }
    };
    let (body, _held) =
        read_body(&req, payload, state.limits.max_body_bytes, &state.limits).await?;
    if body.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    let model = state.registry.get(query.model.as_deref())?;
    let strength = query.strength(&state)?;

    let limits = state.limits.slice;
    let slice = web::block(move || -> Result<_, ServeError> {
        if is_dicom {
            decode_dicom(&body, &limits)
        } else {
            Ok(Slice {
                hu: decode_npy(&body, &limits)?,
                dicom: None,
            })
        }
    })
    .await??;

    // The input's noise estimate, once, on the blocking pool: the metric, the derived
    // instance's figures and the model's noise map all use it.
    let Slice { hu, dicom } = slice;
    let hu = Arc::new(hu);
    let for_noise = hu.clone();
    let noise_in = web::block(move || estimate_noise_hu(&for_noise)).await?;
    let out = pipeline::denoise_hu_with_map(
        &state.batcher,
        state.limits.request_timeout,
        &model,
        &hu,
        strength,
        model.noise_map_from(noise_in),
    )
    .await?;

    let m = model.clone();
    let labels = state.derived.clone();
    let (body, noise_out, uids) = web::block(move || -> Result<_, ServeError> {
        let noise = estimate_noise_hu(&out);
        match dicom {
            Some((obj, meta)) => {
                let d = derived::derive(
                    &obj,
                    &meta,
                    &out,
                    DerivedModel {
                        name: m.name(),
                        version: m.version(),
                        sha256: &m.manifest.onnx.sha256,
                        strength,
                    },
                    &labels,
                    &Processing::now(noise_in, noise),
                )?;
                Ok((
                    d.bytes,
                    noise,
                    Some((d.sop_instance_uid, d.series_instance_uid)),
                ))
            }
            None => {
                let (h, w) = out.dim();
                let data: Vec<f32> = out.iter().copied().collect();
                Ok((npy::encode_f32(&[h, w], &data)?, noise, None))
            }
        }
    })
    .await??;

    let mm = metrics();
    if let Some(v) = noise_in {
        mm.noise_in
            .with_label_values(&[model.name()])
            .observe(f64::from(v));
    }
    if let Some(v) = noise_out {
        mm.noise_out
            .with_label_values(&[model.name()])
            .observe(f64::from(v));
    }
    let mut res = HttpResponse::Ok();
    res.content_type(if is_dicom { DICOM } else { NPY });
    res.insert_header((HeaderName::from_static(H_MODEL), text_header(model.name())));
    res.insert_header((
        HeaderName::from_static(H_VERSION),
        text_header(model.version()),
    ));
    res.insert_header((
        HeaderName::from_static(H_DEVICE),
        text_header(&model.device.to_string()),
    ));
    res.insert_header((
        HeaderName::from_static(H_STRENGTH),
        text_header(&format!("{strength:.2}")),
    ));
    res.insert_header((HeaderName::from_static(H_NOISE_IN), noise_header(noise_in)));
    res.insert_header((
        HeaderName::from_static(H_NOISE_OUT),
        noise_header(noise_out),
    ));
    if let Some((sop, series)) = uids {
        res.insert_header((HeaderName::from_static(H_SOP), text_header(&sop)));
        res.insert_header((HeaderName::from_static(H_SERIES), text_header(&series)));
    }
    Ok(res.body(body))
}

#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub window: [f32; 2],
    pub input: Quality,
    pub output: Quality,
}

#[derive(Debug, Serialize)]
pub struct NoiseReport {
    pub input: Option<f32>,
    pub output: Option<f32>,
    pub reference: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct EvaluateReport {
    pub model: String,
    pub version: String,
    pub device: String,
    pub shape: [usize; 2],
    /// PSNR (dB; null when identical), SSIM and RMSE (HU) of the input and of the output
    /// against the reference, per window (both clipped to it; data range = its width).
    pub windows: Vec<WindowReport>,
    pub noise_hu: NoiseReport,
}

const INPUT_FIELDS: [&str; 4] = ["input", "low_dose", "low-dose", "lowdose"];
const REFERENCE_FIELDS: [&str; 4] = ["reference", "full_dose", "full-dose", "fulldose"];
/// Most parts of an evaluate request (two are used; a few more, e.g. a form's submit
/// field, are tolerated).
const MAX_EVALUATE_PARTS: usize = 8;

/// `POST /v1/evaluate?model=NAME`: multipart/form-data with parts `input` (the low-dose
/// slice) and `reference`, each a DICOM file or a .npy array in HU.
pub async fn evaluate(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ModelQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (_, boundary) =
        multipart::multipart(content_type, "multipart/form-data").map_err(|e| match e {
            MultipartError::NotMultipart(..) => ServeError::UnsupportedMediaType(
                "send multipart/form-data with parts \"input\" and \"reference\"".into(),
            ),
            e => ServeError::InvalidMultipart(e.to_string()),
        })?;
    // The whole body, part headers and all, counts against the limit and the deadline.
    let (body, _held) =
        read_body(&req, payload, state.limits.max_body_bytes, &state.limits).await?;
    let parts = multipart::parse(&body, &boundary, MAX_EVALUATE_PARTS)
        .map_err(|e| ServeError::InvalidMultipart(e.to_string()))?;
    let (mut input, mut reference) = (None, None);
    for part in parts {
        let name = part.form_name().unwrap_or_default().to_ascii_lowercase();
        if INPUT_FIELDS.contains(&name.as_str()) {
            input = Some(part.body);
        } else if REFERENCE_FIELDS.contains(&name.as_str()) {
            reference = Some(part.body);
        }
    }
    let (Some(input), Some(reference)) = (input, reference) else {
        return Err(ServeError::InvalidMultipart(
            "both parts \"input\" and \"reference\" are required".into(),
        ));
    };
    let model = state.registry.get(query.model.as_deref())?;
    let strength = query.strength(&state)?;
    let limits = state.limits.slice;
    let (low, full) = web::block(move || -> Result<_, ServeError> {
        let low = decode_any(&input, &limits)?.hu;
        let full = decode_any(&reference, &limits)?.hu;
        if low.dim() != full.dim() {
            return Err(ServeError::UnsupportedShape(format!(
                "input {:?} and reference {:?} differ in size",
                low.dim(),
                full.dim()
            )));
        }
        Ok((low, full))
    })
    .await??;
    let out = pipeline::denoise_hu(
        &state.batcher,
        state.limits.request_timeout,
        &model,
        &low,
        strength,
    )
    .await?;
    let report = web::block(move || evaluate_report(&model, &low, &out, &full)).await??;
    Ok(HttpResponse::Ok().json(report))
}

fn evaluate_report(
    model: &Arc<LoadedModel>,
    low: &Array2<f32>,
    out: &Array2<f32>,
    full: &Array2<f32>,
) -> Result<EvaluateReport, ServeError> {
    let mut windows = Vec::new();
    for w in Window::REPORT {
        windows.push(WindowReport {
            window: [w.lo, w.hi],
            input: quality(full, low, w)?,
            output: quality(full, out, w)?,
        });
    }
    let (h, w) = low.dim();
    Ok(EvaluateReport {
        model: model.name().to_owned(),
        version: model.version().to_owned(),
        device: model.device.to_string(),
        shape: [h, w],
        windows,
        noise_hu: NoiseReport {
            input: estimate_noise_hu(low),
            output: estimate_noise_hu(out),
            reference: estimate_noise_hu(full),
        },
    })
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub device: String,
    pub method: String,
    pub arch: String,
    pub description: String,
    pub hu_window: [f32; 2],
    pub range: [f32; 2],
    pub spatial_multiple: u32,
    /// The smallest H and W the model takes (smaller images are padded up to it).
    pub min_size: Option<u32>,
    pub sha256: String,
    pub created: String,
    pub dir: String,
}

pub fn model_info(m: &LoadedModel) -> ModelInfo {
    let man = &m.manifest;
    ModelInfo {
        name: man.name.clone(),
        version: man.version.clone(),
        device: m.device.to_string(),
        method: man.method.to_string(),
        arch: man.arch.preset.clone(),
        description: man.arch.description.clone(),
        hu_window: man.normalisation.hu_window,
        range: man.normalisation.range,
        spatial_multiple: man.spatial_multiple,
        min_size: man.min_size,
        sha256: man.onnx.sha256.clone(),
        created: man.created.to_rfc3339(),
        dir: m.dir.display().to_string(),
    }
}

/// `GET /v1/models`: the loaded models, the device and the default strength.
pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    let set = state.registry.snapshot();
    let list: Vec<ModelInfo> = set.all().map(|m| model_info(m)).collect();
    HttpResponse::Ok().json(serde_json::json!({
        "models": list,
        "device": state.registry.factory().device.to_string(),
        "strength": state.strength,
    }))
}

/// `POST /v1/models/reload`: re-scan the folder, swap atomically; 200 with the report
/// (folders that failed are listed under `rejected`, with the model kept serving).
pub async fn reload(state: web::Data<AppState>) -> Result<HttpResponse, ServeError> {
    let registry = state.registry.clone();
    let report = web::block(move || registry.reload()).await?;
    Ok(HttpResponse::Ok().json(report))
}
