//! `/v2`: the Open Inference Protocol (KServe v2 / Triton) endpoints.

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use crate::app::{read_body, AppState};
use crate::error::ServeError;
use crate::model::{LoadedModel, INPUT_NAME, OUTPUT_NAME};
use crate::oip::{self, InferResponse, OutputTensor, Units, HEADER_LENGTH};
use crate::pipeline;
use crate::pixels::{self, Prepared};

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "ldct",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// `GET /v2/health/live`: the process serves HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 when at least one model is loaded, else 503.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.registry.is_empty() {
        HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(json!({
            "ready": false,
            "error": {"code": "not_ready", "message": "no model is loaded"},
        }))
    } else {
        HttpResponse::Ok().json(json!({ "ready": true }))
    }
}

fn find(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, ServeError> {
    let m = state.registry.get(Some(name))?;
    match version {
        Some(v) if v != m.version() => Err(ServeError::UnknownModel(format!(
            "model {name:?} has version {:?} loaded, not {v:?}",
            m.version()
        ))),
        _ => Ok(m),
    }
}

fn metadata(m: &LoadedModel) -> Value {
    let man = &m.manifest;
    let tensor = |name: &str| json!({"name": name, "datatype": "FP32", "shape": [-1, 1, -1, -1]});
    json!({
        "name": man.name,
        "versions": [man.version],
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
) -> Result<HttpResponse, ServeError> {
    let m = find(&state, &path, None)?;
    Ok(HttpResponse::Ok().json(metadata(&m)))
}

/// `GET /v2/models/{model}/versions/{version}`.
pub async fn model_metadata_version(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ServeError> {
    let (name, version) = path.into_inner();
    let m = find(&state, &name, Some(&version))?;
    Ok(HttpResponse::Ok().json(metadata(&m)))
}

fn ready_body(m: &LoadedModel) -> HttpResponse {
    HttpResponse::Ok().json(json!({"name": m.name(), "version": m.version(), "ready": true}))
}

/// `GET /v2/models/{model}/ready`.
pub async fn model_ready(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ServeError> {
    let m = find(&state, &path, None)?;
    Ok(ready_body(&m))
}

/// `GET /v2/models/{model}/versions/{version}/ready`.
pub async fn model_ready_version(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ServeError> {
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
) -> Result<HttpResponse, ServeError> {
    run_infer(req, state, path.into_inner(), None, payload).await
}

/// `POST /v2/models/{model}/versions/{version}/infer`.
pub async fn infer_version(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
    let (name, version) = path.into_inner();
    run_infer(req, state, name, Some(version), payload).await
}

async fn run_infer(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: String,
    version: Option<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ServeError> {
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
    let body = read_body(&req, payload, state.limits.max_body_bytes).await?;
    let model = find(&state, &name, version.as_deref())?;
    let m = model.clone();
    let (input, mut prepared) = web::block(move || -> Result<_, ServeError> {
        let input = oip::decode_request(&body, json_len, INPUT_NAME, OUTPUT_NAME)?;
        let (h, w) = (input.h, input.w);
        let multiple = m.spatial_multiple();
        let prepared: Vec<Prepared> = input
            .data
            .chunks_exact(h * w)
            .map(|s| {
                let normalised = match input.units {
                    Units::Normalised => s.to_vec(),
                    Units::Hu => s.iter().map(|&v| m.normaliser.forward(v)).collect(),
                };
                pixels::prepare_normalised(normalised, h, w, multiple)
            })
            .collect();
        Ok((input, prepared))
    })
    .await??;

    let outs = pipeline::run_prepared(
        &state.batcher,
        state.limits.request_timeout,
        &model,
        &mut prepared,
    )
    .await?;

    let mut data = Vec::with_capacity(input.n * input.h * input.w);
    for (out, p) in outs.iter().zip(&prepared) {
        let mut v = pixels::finish_normalised(out, p);
        if input.units == Units::Hu {
            model.normaliser.inverse_inplace(&mut v);
        }
        data.extend_from_slice(&v);
    }
    let mut parameters = Map::new();
    parameters.insert("device".into(), Value::from(model.device.to_string()));
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
    let (body, header_len) = oip::encode_response(response, input.binary_output)?;
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
