//! `/v2`: the Open Inference Protocol (KServe v2 / Triton) REST endpoints. Errors are
//! in the protocol's form, `{"error": "<message>"}` ([`OipError`]).

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ldct_proto::contract::{INPUT_NAME, OUTPUT_NAME};
use serde_json::{json, Map, Value};

use super::extract::read_body;
use super::middleware::only;
use super::tensor::{self, DecodedInput, InferResponse, OutputTensor, Units, HEADER_LENGTH};
use crate::error::{OipError, ServeError};
use crate::inference::model::LoadedModel;
use crate::inference::pipeline;
use crate::inference::pixels::{self, Prepared};
use crate::state::AppState;

/// The scope of the Open Inference Protocol routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        web::resource("/v2").route(web::get().to(server_metadata)),
    ))
    .service(only(
        web::resource("/v2/health/live").route(web::get().to(live)),
    ))
    .service(only(
        web::resource("/v2/health/ready").route(web::get().to(ready)),
    ))
    .service(only(
        web::resource("/v2/models/{model}").route(web::get().to(model_metadata)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}")
            .route(web::get().to(model_metadata_version)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/ready").route(web::get().to(model_ready)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}/ready")
            .route(web::get().to(model_ready_version)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/infer").route(web::post().to(infer)),
    ))
    .service(only(
        web::resource("/v2/models/{model}/versions/{version}/infer")
            .route(web::post().to(infer_version)),
    ));
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "ldct",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository"],
    }))
}

/// `GET /v2/health/live`: the process serves HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 when at least one model is loaded and inference is not
/// stalled (no queued slice older than the request timeout, not every inference thread
/// stuck in one run for longer), else 503 saying why.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let unready = |why: String| {
        HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(json!({
            "ready": false,
            "error": why,
        }))
    };
    match state.not_ready() {
        Some(why) => unready(why),
        None => HttpResponse::Ok().json(json!({ "ready": true })),
    }
}

fn find(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, ServeError> {
    state.registry.get_version(name, version)
}

/// The model's metadata; `versions` lists every served version of its name.
fn metadata(state: &AppState, m: &LoadedModel) -> Value {
    let man = &m.manifest;
    let versions = state.registry.versions_of(m);
    let tensor = |name: &str| json!({"name": name, "datatype": "FP32", "shape": [-1, 1, -1, -1]});
    json!({
        "name": m.name(),
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [tensor(INPUT_NAME)],
        "outputs": [tensor(OUTPUT_NAME)],
        "device": m.device.to_string(),
        "parameters": {
            "device": m.device.to_string(),
            "units": "normalised (request parameter ldct_units=\"hu\" for HU)",
            "hu_window": man.normalisation.hu_window,
            "range": man.normalisation.range,
            "spatial_multiple": man.spatial_multiple,
            "min_size": man.min_size,
            "method": man.method.to_string(),
            "arch": man.arch.preset,
            "sha256": man.onnx.sha256,
        },
    })
}

/// `GET /v2/models/{model}`.
pub async fn model_metadata(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, OipError> {
    let m = find(&state, &path, None)?;
    Ok(HttpResponse::Ok().json(metadata(&state, &m)))
}

/// `GET /v2/models/{model}/versions/{version}`.
pub async fn model_metadata_version(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OipError> {
    let (name, version) = path.into_inner();
    let m = find(&state, &name, Some(&version))?;
    Ok(HttpResponse::Ok().json(metadata(&state, &m)))
}

fn ready_body(m: &LoadedModel) -> HttpResponse {
    HttpResponse::Ok().json(json!({"name": m.name(), "version": m.version(), "ready": true}))
}

/// `GET /v2/models/{model}/ready`.
pub async fn model_ready(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, OipError> {
    let m = find(&state, &path, None)?;
    Ok(ready_body(&m))
}

/// `GET /v2/models/{model}/versions/{version}/ready`.
pub async fn model_ready_version(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OipError> {
    let (name, version) = path.into_inner();
    let m = find(&state, &name, Some(&version))?;
    Ok(ready_body(&m))
}

/// `POST /v2/models/{model}/infer`.
pub async fn infer(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    run_infer(req, state, path.into_inner(), None, payload).await
}

/// `POST /v2/models/{model}/versions/{version}/infer`.
pub async fn infer_version(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    let (name, version) = path.into_inner();
    run_infer(req, state, name, Some(version), payload).await
}

/// The limits a tensor request is checked against before its data is read.
pub(crate) fn request_limits(state: &AppState) -> tensor::RequestLimits {
    tensor::RequestLimits {
        slice: state.limits.slice,
        max_slices: state.batcher.config().queue_capacity,
    }
}

/// Runs an inference request of the Open Inference Protocol, whatever its transport
/// (REST here, gRPC in [`crate::grpc`]): `decode` (on the blocking pool, with the
/// normalisation and padding) gives the input `[N, 1, H, W]`; its slices go through the
/// batcher, and the output comes back in the input's units, composed with it at the
/// request's strength. Returns the input, the output data and the strength used.
pub(crate) async fn denoise_tensor(
    state: &AppState,
    model: &Arc<LoadedModel>,
    decode: impl FnOnce() -> Result<DecodedInput, ServeError> + Send + 'static,
) -> Result<(DecodedInput, Vec<f32>, f32), ServeError> {
    let m = model.clone();
    let (input, mut prepared) = web::block(move || -> Result<_, ServeError> {
        let input = decode()?;
        let (h, w) = (input.h, input.w);
        let padding = m.padding();
        let prepared: Vec<Prepared> = input
            .data
            .chunks_exact(h * w)
            .map(|s| {
                let normalised = match input.units {
                    Units::Normalised => s.to_vec(),
                    Units::Hu => s.iter().map(|&v| m.normaliser.forward(v)).collect(),
                };
                // A noise-conditioned model's map comes from the slice's HU.
                let map = m.manifest.noise_map.as_ref().and_then(|_| {
                    let hu: Vec<f32> = match input.units {
                        Units::Hu => s.to_vec(),
                        Units::Normalised => s.iter().map(|&v| m.normaliser.inverse(v)).collect(),
                    };
                    ndarray::Array2::from_shape_vec((h, w), hu)
                        .ok()
                        .and_then(|a| m.noise_map_value(&a))
                });
                pixels::prepare_normalised(normalised, h, w, &padding).with_noise_map(map)
            })
            .collect();
        Ok((input, prepared))
    })
    .await??;

    let outs = pipeline::run_prepared(
        &state.batcher,
        state.limits.request_timeout,
        model,
        &mut prepared,
    )
    .await?;

    let strength = input.strength.unwrap_or(state.strength);
    let compose = model.compose(strength);
    let mut data = Vec::with_capacity(input.n * input.h * input.w);
    let plane = input.h * input.w;
    for ((out, p), src) in outs
        .iter()
        .zip(&prepared)
        .zip(input.data.chunks_exact(plane))
    {
        let mut v = pixels::finish_normalised(out, p);
        match input.units {
            Units::Hu => {
                model.normaliser.inverse_inplace(&mut v);
                ldct_proto::contract::compose(src, &mut v, compose.outside, strength);
            }
            Units::Normalised => pixels::compose_normalised(src, &mut v, compose),
        }
        data.extend_from_slice(&v);
    }
    Ok((input, data, strength))
}

async fn run_infer(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: String,
    version: Option<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OipError> {
    let json_len = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ServeError::BadRequest(format!("{HEADER_LENGTH} must be a byte count"))
                })?,
        ),
    };
    let (body, _held) =
        read_body(&req, payload, state.limits.max_body_bytes, &state.limits).await?;
    let model = find(&state, &name, version.as_deref())?;
    let limits = request_limits(&state);
    let (input, data, strength) = denoise_tensor(&state, &model, move || {
        tensor::decode_request(&body, json_len, INPUT_NAME, OUTPUT_NAME, &limits)
    })
    .await?;
    let mut parameters = Map::new();
    parameters.insert("device".into(), Value::from(model.device.to_string()));
    parameters.insert("strength".into(), Value::from(f64::from(strength)));
    let response = InferResponse {
        model_name: model.name().to_owned(),
        model_version: model.version().to_owned(),
        id: input.id.clone(),
        parameters,
        outputs: vec![OutputTensor {
            name: OUTPUT_NAME.into(),
            datatype: "FP32".into(),
            shape: vec![input.n, 1, input.h, input.w],
            parameters: Map::new(),
            data: Some(data),
        }],
    };
    let (body, header_len) = tensor::encode_response(response, input.binary_output)?;
    let mut res = HttpResponse::Ok();
    match header_len {
        Some(n) => {
            res.content_type("application/octet-stream");
            res.insert_header((
                HeaderName::from_static("inference-header-content-length"),
                HeaderValue::from(n),
            ));
        }
        None => {
            res.content_type("application/json");
        }
    }
    Ok(res.body(body))
}
