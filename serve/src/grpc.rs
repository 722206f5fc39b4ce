//! The Open Inference Protocol over gRPC (`--grpc-bind`): KServe v2's
//! `inference.GRPCInferenceService` as tritonclient.grpc speaks it
//! (`proto/grpc_service.proto`, compiled by build.rs with protox + tonic-prost-build).
//!
//! It shares everything with the REST routes: the registry (names, versions, the
//! repository extension), the batcher and its queue, the request timeout, the slice
//! limits, the bearer token (`authorization: Bearer ...` metadata; health needs none)
//! and the inference path ([`crate::http::oip::denoise_tensor`]). A message is at most
//! `--max-body-bytes`, and at most [`concurrent_calls`] calls run at once (later ones
//! wait, unread), so gRPC messages in memory stay within `--max-inflight-bytes`. Input data come as `raw_input_contents` (little-endian FP32,
//! what tritonclient sends) or `contents.fp32_contents`; the output goes back as
//! `raw_output_contents`. Errors are gRPC statuses: INVALID_ARGUMENT (4xx of the REST
//! API), NOT_FOUND (unknown model), UNAUTHENTICATED, RESOURCE_EXHAUSTED (queue full,
//! too large), UNAVAILABLE (shutting down), DEADLINE_EXCEEDED (timeout), INTERNAL.

use std::collections::HashMap;
use std::sync::Arc;

use ldct_proto::contract::{INPUT_NAME, OUTPUT_NAME};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::error::ServeError;
use crate::http::oip::{denoise_tensor, request_limits};
use crate::http::tensor::{self, DecodedInput};
use crate::inference::model::LoadedModel;
use crate::inference::registry::{Registry, ReloadReport};
use crate::metrics::metrics;
use crate::state::AppState;

/// The code generated from `proto/grpc_service.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;

/// The service on the application's state.
pub struct Service {
    state: AppState,
}

/// The tonic service, with messages up to `max_message_bytes` each way.
pub fn server(state: AppState, max_message_bytes: usize) -> GrpcInferenceServiceServer<Service> {
    GrpcInferenceServiceServer::new(Service { state })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

/// How many gRPC calls run at once: as many messages of `max_message_bytes` as the
/// in-flight budget holds, at least one.
pub fn concurrent_calls(inflight_bytes: usize, max_message_bytes: usize) -> usize {
    (inflight_bytes / max_message_bytes.max(1)).max(1)
}

/// A [`ServeError`] as a gRPC status (the message is the REST API's).
pub fn status(e: ServeError) -> Status {
    let code = match e.status().as_u16() {
        401 => tonic::Code::Unauthenticated,
        404 => tonic::Code::NotFound,
        408 | 504 => tonic::Code::DeadlineExceeded,
        413 | 429 => tonic::Code::ResourceExhausted,
        503 => match e {
            ServeError::ShuttingDown => tonic::Code::Unavailable,
            _ => tonic::Code::ResourceExhausted,
        },
        400..=499 => tonic::Code::InvalidArgument,
        501 => tonic::Code::Unimplemented,
        _ => tonic::Code::Internal,
    };
    Status::new(code, e.to_string())
}

impl Service {
    /// The bearer token check of the REST API, on the request's metadata.
    fn authorise<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = self.state.limits.api_token.as_deref() else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given.is_some_and(|v| crate::http::middleware::authorization_ok(v, token)) {
            Ok(())
        } else {
            Err(status(ServeError::Unauthorized))
        }
    }

    fn model(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, Status> {
        let version = Some(version).filter(|v| !v.is_empty());
        self.state
            .registry
            .get_version(name, version)
            .map_err(status)
    }

    fn count(method: &str, result: &Result<impl Sized, Status>) {
        let code = match result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        metrics()
            .grpc_requests
            .with_label_values(&[method, code.as_str()])
            .inc();
    }
}

impl Service {
    /// A repository change (load or unload of `name`) on the blocking pool, counted
    /// under `method`.
    async fn change(
        &self,
        method: &str,
        name: String,
        op: fn(&Registry, &str) -> Result<ReloadReport, ServeError>,
    ) -> Result<(), Status> {
        let registry = self.state.registry.clone();
        let result = match actix_web::web::block(move || op(&registry, &name)).await {
            Ok(done) => done.map(|_| ()).map_err(status),
            Err(e) => Err(status(ServeError::from(e))),
        };
        Self::count(method, &result);
        result
    }
}

/// An InferParameter as the JSON value the REST API would have received.
fn json_param(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::from(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::StringParam(s)) => Value::from(s.as_str()),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(*d),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        None => Value::Null,
    }
}

fn json_params(params: &HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), json_param(v)))
        .collect()
}

/// A ModelInferRequest as the decoded input of the REST API: the same checks (one
/// FP32 input `[N, 1, H, W]` within the limits, finite data, the ldct parameters).
fn decode(
    mut req: pb::ModelInferRequest,
    limits: &tensor::RequestLimits,
) -> Result<DecodedInput, ServeError> {
    let bad = |m: String| ServeError::InvalidTensor(m);
    if req.inputs.len() != 1 {
        return Err(bad(format!(
            "expected exactly one input ({INPUT_NAME:?}), got {}",
            req.inputs.len()
        )));
    }
    let input = req.inputs.remove(0);
    let (n, h, w, count) = tensor::check_input(
        &input.name,
        &input.datatype,
        &input.shape,
        INPUT_NAME,
        limits,
    )?;
    let data: Vec<f32> = match (req.raw_input_contents.len(), &input.contents) {
        (0, Some(c)) if !c.fp32_contents.is_empty() => {
            if c.fp32_contents.len() != count {
                return Err(bad(format!(
                    "{} values for shape {:?} ({count} expected)",
                    c.fp32_contents.len(),
                    input.shape
                )));
            }
            c.fp32_contents.clone()
        }
        (0, _) => return Err(bad("the input has no data".into())),
        (1, _) => {
            let raw = &req.raw_input_contents[0];
            if raw.len() != count * 4 {
                return Err(bad(format!(
                    "raw_input_contents has {} bytes; shape {:?} of FP32 needs {}",
                    raw.len(),
                    input.shape,
                    count * 4
                )));
            }
            tensor::fp32_from_le(raw)
        }
        (k, _) => return Err(bad(format!("{k} raw_input_contents for one input"))),
    };
    if !data.iter().all(|v| v.is_finite()) {
        return Err(ServeError::NonFinite);
    }
    for o in &req.outputs {
        if o.name != OUTPUT_NAME {
            return Err(bad(format!(
                "unknown output {:?}; the model's output is {OUTPUT_NAME:?}",
                o.name
            )));
        }
    }
    let params = json_params(&req.parameters);
    let (units, strength) = tensor::request_options(Some(&params))?;
    Ok(DecodedInput {
        id: Some(req.id).filter(|id| !id.is_empty()),
        n,
        h,
        w,
        data,
        units,
        binary_output: true,
        strength,
    })
}

fn tensor_metadata(name: &str) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![-1, 1, -1, -1],
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.state.not_ready().is_none();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.authorise(&req)?;
        let r = req.into_inner();
        let ready = self.model(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        self.authorise(&req)?;
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "ldct".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorise(&req)?;
        let r = req.into_inner();
        let m = self.model(&r.name, &r.version)?;
        let versions = self.state.registry.versions_of(&m);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name().to_owned(),
            versions,
            platform: "onnxruntime_onnx".into(),
            inputs: vec![tensor_metadata(INPUT_NAME)],
            outputs: vec![tensor_metadata(OUTPUT_NAME)],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let result = async {
            self.authorise(&req)?;
            let req = req.into_inner();
            let model = self.model(&req.model_name, &req.model_version)?;
            let limits = request_limits(&self.state);
            let (input, data, strength) =
                denoise_tensor(&self.state, &model, move || decode(req, &limits))
                    .await
                    .map_err(status)?;
            let mut raw = Vec::new();
            tensor::fp32_to_le(&data, &mut raw);
            let param = |c: ParameterChoice| pb::InferParameter {
                parameter_choice: Some(c),
            };
            let parameters = HashMap::from([
                (
                    "device".to_owned(),
                    param(ParameterChoice::StringParam(model.device.to_string())),
                ),
                (
                    "strength".to_owned(),
                    param(ParameterChoice::DoubleParam(f64::from(strength))),
                ),
            ]);
            Ok(Response::new(pb::ModelInferResponse {
                model_name: model.name().to_owned(),
                model_version: model.version().to_owned(),
                id: input.id.unwrap_or_default(),
                parameters,
                outputs: vec![pb::model_infer_response::InferOutputTensor {
                    name: OUTPUT_NAME.into(),
                    datatype: "FP32".into(),
                    shape: vec![input.n as i64, 1, input.h as i64, input.w as i64],
                    parameters: HashMap::new(),
                    contents: None,
                }],
                raw_output_contents: vec![raw],
            }))
        }
        .await;
        Self::count("ModelInfer", &result);
        result
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        self.authorise(&req)?;
        let ready_only = req.into_inner().ready;
        let models = self
            .state
            .registry
            .index()
            .iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name.clone(),
                version: e.version.clone(),
                state: e.state.into(),
                reason: e.reason.clone(),
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.authorise(&req)?;
        let name = req.into_inner().model_name;
        let result = self
            .change("RepositoryModelLoad", name, Registry::load)
            .await;
        result.map(|()| Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.authorise(&req)?;
        let name = req.into_inner().model_name;
        let result = self
            .change("RepositoryModelUnload", name, Registry::unload)
            .await;
        result.map(|()| Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_calls_fit_the_inflight_budget() {
        // The defaults: 256 MiB of bodies, 64 MiB messages.
        assert_eq!(concurrent_calls(256 << 20, 64 << 20), 4);
        assert_eq!(concurrent_calls(100, 64), 1);
        assert_eq!(concurrent_calls(10, 64), 1);
        assert_eq!(concurrent_calls(1 << 30, 1 << 20), 1024);
    }

    #[test]
    fn errors_map_to_the_status_codes_clients_retry_on() {
        assert_eq!(
            status(ServeError::QueueFull { capacity: 1 }).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            status(ServeError::Timeout { seconds: 1.0 }).code(),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            status(ServeError::ShuttingDown).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            status(ServeError::UnknownModel("x".into())).code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            status(ServeError::NonFinite).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status(ServeError::Internal("x".into())).code(),
            tonic::Code::Internal
        );
    }
}
