//! The one error type of the server: every failure maps to a status code, a stable
//! machine-readable code, an error type and a documentation link, in one of two body
//! forms:
//!
//! - ldct's own routes: `{"error": {"code", "message", "type", "link"}}`;
//! - the Open Inference Protocol (`/v2/...`): `{"error": "<message>"}` as the protocol
//!   says (tritonclient reads it), the code in the `x-ldct-error-code` header
//!   ([`OipError`]).
//!
//! The table of codes in serve/README.md ("Errors") is generated from this enum
//! ([`markdown_table`]) and a test keeps them equal.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use ldct_imaging::instance::InstanceError;
use ldct_imaging::limits::SliceTooLarge;
use ldct_imaging::ImagingError;
use serde::Serialize;

/// Seconds a client is asked to wait (`Retry-After`) when the queue is full.
pub const RETRY_AFTER_SECS: u32 = 1;
/// Where the error codes are documented, relative to the repository root (the `link`
/// of an error body is this plus `#` and the code: the row of the table).
pub const DOCS: &str = "serve/README.md";
/// Response header carrying the error code of an Open Inference Protocol error.
pub const CODE_HEADER: &str = "x-ldct-error-code";

/// What kind of failure an error is (`error.type`): who has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request is wrong: fix it before sending it again.
    InvalidRequest,
    /// Missing or wrong credentials.
    Auth,
    /// The route, model or job does not exist.
    NotFound,
    /// The server is busy or stopping: the same request may succeed later.
    Unavailable,
    /// The server is not set up for this (a flag is missing).
    NotConfigured,
    /// A failure of the server or the model: report it.
    Internal,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::Auth => "auth",
            ErrorType::NotFound => "not_found",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotConfigured => "not_configured",
            ErrorType::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is empty")]
    EmptyBody,
    #[error("invalid DICOM: {0}")]
    InvalidDicom(String),
    #[error("invalid .npy: {0}")]
    InvalidNpy(String),
    #[error("invalid tensor: {0}")]
    InvalidTensor(String),
    #[error("invalid multipart body: {0}")]
    InvalidMultipart(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnknownModel(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    SliceTooLarge(String),
    #[error(
        "the request holds {slices} slices, more than the inference queue's capacity of \
         {capacity}: send at most {capacity} per request"
    )]
    TooManySlices { slices: usize, capacity: usize },
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: f64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("unsupported dtype: {0}")]
    UnsupportedDtype(String),
    #[error("unsupported shape: {0}")]
    UnsupportedShape(String),
    #[error("the image contains NaN or infinite values")]
    NonFinite,
    #[error("unsupported image: {0}")]
    UnsupportedImage(String),
    #[error("the inference queue is full ({capacity} slices waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("the server holds its limit of {limit} bytes of request bodies; retry later")]
    Busy { limit: usize },
    #[error("{max} pull jobs are already queued or running; retry later")]
    TooManyJobs { max: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no result within the request timeout of {seconds} s")]
    Timeout { seconds: f64 },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("no PACS is configured: start ldct-serve with --pacs-url (LDCT_PACS_URL)")]
    PacsNotConfigured,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// The stable machine-readable code (`error.code` in the body, `kind` in metrics).
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "bad_request",
            ServeError::EmptyBody => "empty_body",
            ServeError::InvalidDicom(_) => "invalid_dicom",
            ServeError::InvalidNpy(_) => "invalid_npy",
            ServeError::InvalidTensor(_) => "invalid_tensor",
            ServeError::InvalidMultipart(_) => "invalid_multipart",
            ServeError::Unauthorized => "unauthorized",
            ServeError::NotFound(_) => "not_found",
            ServeError::UnknownModel(_) => "unknown_model",
            ServeError::MethodNotAllowed => "method_not_allowed",
            ServeError::PayloadTooLarge { .. } => "payload_too_large",
            ServeError::SliceTooLarge(_) => "slice_too_large",
            ServeError::TooManySlices { .. } => "too_many_slices",
            ServeError::BodyTimeout { .. } => "body_timeout",
            ServeError::UnsupportedMediaType(_) => "unsupported_media_type",
            ServeError::UnsupportedDtype(_) => "unsupported_dtype",
            ServeError::UnsupportedShape(_) => "unsupported_shape",
            ServeError::NonFinite => "non_finite",
            ServeError::UnsupportedImage(_) => "unsupported_image",
            ServeError::QueueFull { .. } => "queue_full",
            ServeError::Busy { .. } => "busy",
            ServeError::TooManyJobs { .. } => "too_many_jobs",
            ServeError::ShuttingDown => "shutting_down",
            ServeError::Timeout { .. } => "timeout",
            ServeError::Inference(_) => "inference_failed",
            ServeError::PacsNotConfigured => "pacs_not_configured",
            ServeError::Internal(_) => "internal",
        }
    }

    /// Who has to act.
    pub fn error_type(&self) -> ErrorType {
        match self.status().as_u16() {
            401 => ErrorType::Auth,
            404 => ErrorType::NotFound,
            501 => ErrorType::NotConfigured,
            429 | 503 | 504 => ErrorType::Unavailable,
            500..=599 => ErrorType::Internal,
            _ => ErrorType::InvalidRequest,
        }
    }

    /// The documentation of the code.
    pub fn link(&self) -> String {
        format!("{DOCS}#{}", self.code())
    }

    /// What the code means, for the documentation table.
    pub fn description(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "a query parameter, path segment, header or JSON body is invalid",
            ServeError::EmptyBody => "the request has no body",
            ServeError::InvalidDicom(_) => "the body (or a part) is not readable DICOM, or its pixel data cannot be decoded",
            ServeError::InvalidNpy(_) => "the body (or a part) is not a readable .npy array",
            ServeError::InvalidTensor(_) => "an inference request's tensors do not match the model (name, datatype, shape, data size)",
            ServeError::InvalidMultipart(_) => "the multipart body is malformed or misses a part",
            ServeError::Unauthorized => "`--api-token` is set and the request has no or a wrong `Authorization: Bearer` token",
            ServeError::NotFound(_) => "no such route or job",
            ServeError::UnknownModel(_) => "no model of that name (and version) is loaded",
            ServeError::MethodNotAllowed => "the route exists, not with this method",
            ServeError::PayloadTooLarge { .. } => "the body is larger than `--max-body-bytes` (`--dicomweb-max-body-bytes` for STOW-RS)",
            ServeError::SliceTooLarge(_) => "a slice has more rows, columns or pixels than `--max-slice-side` / `--max-slice-pixels` (read from its header, before decoding)",
            ServeError::TooManySlices { .. } => "an inference request has more slices than `--queue-capacity` can ever hold: split it (retrying would not help)",
            ServeError::BodyTimeout { .. } => "the body was not received within `--body-timeout`",
            ServeError::UnsupportedMediaType(_) => "the Content-Type is not one the route takes",
            ServeError::UnsupportedDtype(_) => "a .npy array is neither float32 nor int16",
            ServeError::UnsupportedShape(_) => "the image is empty, not 2-D, or differs in size from its reference",
            ServeError::NonFinite => "the image has NaN or infinite values",
            ServeError::UnsupportedImage(_) => "not a single-frame CT image, or an unsupported transfer syntax",
            ServeError::QueueFull { .. } => "the inference queue is full (`--queue-capacity`): retry after `Retry-After` seconds",
            ServeError::Busy { .. } => "the request bodies being received and processed hold `--max-inflight-bytes`: retry after `Retry-After` seconds",
            ServeError::TooManyJobs { .. } => "`--max-active-jobs` pull jobs are queued or running: retry after `Retry-After` seconds",
            ServeError::ShuttingDown => "the server is stopping: retry on another replica",
            ServeError::Timeout { .. } => "no result within `--request-timeout`",
            ServeError::Inference(_) => "ONNX Runtime failed on the request",
            ServeError::PacsNotConfigured => "a DICOMweb route or pull job without `--pacs-url`",
            ServeError::Internal(_) => "a server bug or a failure of the machine",
        }
    }

    /// One error of each variant (the documentation table and the tests).
    pub fn catalog() -> Vec<ServeError> {
        let all = vec![
            ServeError::BadRequest("invalid query string: ...".into()),
            ServeError::EmptyBody,
            ServeError::InvalidDicom("...".into()),
            ServeError::InvalidNpy("...".into()),
            ServeError::InvalidTensor("...".into()),
            ServeError::InvalidMultipart("...".into()),
            ServeError::Unauthorized,
            ServeError::NotFound("no route for GET /x".into()),
            ServeError::UnknownModel("unknown model \"x\"; loaded: default".into()),
            ServeError::MethodNotAllowed,
            ServeError::PayloadTooLarge { limit: 67_108_864 },
            ServeError::SliceTooLarge("a slice of 4096x4096 pixels is larger than ...".into()),
            ServeError::TooManySlices {
                slices: 100,
                capacity: 64,
            },
            ServeError::BodyTimeout { seconds: 60.0 },
            ServeError::UnsupportedMediaType("...".into()),
            ServeError::UnsupportedDtype("...".into()),
            ServeError::UnsupportedShape("...".into()),
            ServeError::NonFinite,
            ServeError::UnsupportedImage("...".into()),
            ServeError::QueueFull { capacity: 64 },
            ServeError::Busy { limit: 268_435_456 },
            ServeError::TooManyJobs { max: 32 },
            ServeError::ShuttingDown,
            ServeError::Timeout { seconds: 30.0 },
            ServeError::Inference("...".into()),
            ServeError::PacsNotConfigured,
            ServeError::Internal("...".into()),
        ];
        debug_assert!(all.iter().enumerate().all(|(i, e)| e.ordinal() == i));
        all
    }

    /// The variant's position in [`ServeError::catalog`]: an exhaustive match, so a new
    /// variant does not compile until it has its place (and its row in the table).
    fn ordinal(&self) -> usize {
        match self {
            ServeError::BadRequest(_) => 0,
            ServeError::EmptyBody => 1,
            ServeError::InvalidDicom(_) => 2,
            ServeError::InvalidNpy(_) => 3,
            ServeError::InvalidTensor(_) => 4,
            ServeError::InvalidMultipart(_) => 5,
            ServeError::Unauthorized => 6,
            ServeError::NotFound(_) => 7,
            ServeError::UnknownModel(_) => 8,
            ServeError::MethodNotAllowed => 9,
            ServeError::PayloadTooLarge { .. } => 10,
            ServeError::SliceTooLarge(_) => 11,
            ServeError::TooManySlices { .. } => 12,
            ServeError::BodyTimeout { .. } => 13,
            ServeError::UnsupportedMediaType(_) => 14,
            ServeError::UnsupportedDtype(_) => 15,
            ServeError::UnsupportedShape(_) => 16,
            ServeError::NonFinite => 17,
            ServeError::UnsupportedImage(_) => 18,
            ServeError::QueueFull { .. } => 19,
            ServeError::Busy { .. } => 20,
            ServeError::TooManyJobs { .. } => 21,
            ServeError::ShuttingDown => 22,
            ServeError::Timeout { .. } => 23,
            ServeError::Inference(_) => 24,
            ServeError::PacsNotConfigured => 25,
            ServeError::Internal(_) => 26,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_)
            | ServeError::EmptyBody
            | ServeError::InvalidDicom(_)
            | ServeError::InvalidNpy(_)
            | ServeError::InvalidTensor(_)
            | ServeError::InvalidMultipart(_) => StatusCode::BAD_REQUEST,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::NotFound(_) | ServeError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::PayloadTooLarge { .. }
            | ServeError::SliceTooLarge(_)
            | ServeError::TooManySlices { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ServeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::UnsupportedDtype(_)
            | ServeError::UnsupportedShape(_)
            | ServeError::NonFinite
            | ServeError::UnsupportedImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::QueueFull { .. } | ServeError::Busy { .. } | ServeError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::TooManyJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Inference(_) | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::PacsNotConfigured => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The JSON body of ldct's own routes.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                error_type: self.error_type(),
                link: self.link(),
            },
        }
    }

    /// The JSON body of the Open Inference Protocol: `{"error": "<message>"}`.
    pub fn oip_body(&self) -> OipErrorBody {
        OipErrorBody {
            error: self.to_string(),
        }
    }

    /// The response without its body: status, `Retry-After`, `WWW-Authenticate`.
    fn response_head(&self) -> actix_web::HttpResponseBuilder {
        let mut res = HttpResponse::build(self.status());
        match self {
            ServeError::QueueFull { .. }
            | ServeError::Busy { .. }
            | ServeError::ShuttingDown
            | ServeError::TooManyJobs { .. } => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
            }
            ServeError::Unauthorized => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ldct\""),
                ));
            }
            _ => {}
        }
        res
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    pub link: String,
}

/// The Open Inference Protocol's error body.
#[derive(Debug, Serialize)]
pub struct OipErrorBody {
    pub error: String,
}

impl ResponseError for ServeError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.response_head().json(self.body())
    }
}

/// A [`ServeError`] answered in the Open Inference Protocol's form
/// (`{"error": "<message>"}`, the code in the [`CODE_HEADER`] header).
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct OipError(#[from] pub ServeError);

impl ResponseError for OipError {
    fn status_code(&self) -> StatusCode {
        self.0.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.0
            .response_head()
            .insert_header((
                HeaderName::from_static(CODE_HEADER),
                HeaderValue::from_static(self.0.code()),
            ))
            .json(self.0.oip_body())
    }
}

impl From<actix_web::error::BlockingError> for OipError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        OipError(e.into())
    }
}

/// Whether a path is the Open Inference Protocol's (its errors take its body form).
pub fn is_oip_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The error in the body form of the route at `path`.
pub fn for_path(e: ServeError, path: &str) -> actix_web::Error {
    if is_oip_path(path) {
        OipError(e).into()
    } else {
        e.into()
    }
}

/// The stable code of an error response made from a [`ServeError`] in either form
/// (`None` for actix's own errors).
pub fn code_of(e: &actix_web::Error) -> Option<&'static str> {
    e.as_error::<ServeError>()
        .or_else(|| e.as_error::<OipError>().map(|o| &o.0))
        .map(ServeError::code)
}

/// The table of serve/README.md's "Errors" section.
pub fn markdown_table() -> String {
    let mut s = String::from("| code | status | type | when |\n| --- | --- | --- | --- |\n");
    for e in ServeError::catalog() {
        s.push_str(&format!(
            "| <a id=\"{code}\"></a>`{code}` | {status} | `{ty}` | {what} |\n",
            code = e.code(),
            status = e.status().as_u16(),
            ty = e.error_type().as_str(),
            what = e.description(),
        ));
    }
    s
}

impl From<ImagingError> for ServeError {
    fn from(e: ImagingError) -> Self {
        match e {
            ImagingError::NotDicom(m) | ImagingError::DicomCorrupt(m) => {
                ServeError::InvalidDicom(m)
            }
            ImagingError::DicomDecode(m) => {
                ServeError::InvalidDicom(format!("cannot decode pixel data: {m}"))
            }
            ImagingError::NotAnImage(m) => {
                ServeError::UnsupportedImage(format!("the DICOM object has no image: {m}"))
            }
            ImagingError::DicomUnsupported(m) => ServeError::UnsupportedImage(m),
            ImagingError::Npy(m) => ServeError::InvalidNpy(m),
            ImagingError::NpyDtype(d) => {
                ServeError::UnsupportedDtype(format!(".npy dtype {d:?}; send float32 or int16 HU"))
            }
            ImagingError::Shape { shape, expected } => {
                ServeError::UnsupportedShape(format!("{shape:?}: expected {expected}"))
            }
            ImagingError::SizeMismatch { a, b } => {
                ServeError::UnsupportedShape(format!("images differ in size: {a:?} vs {b:?}"))
            }
            ImagingError::NonFinite => ServeError::NonFinite,
            other => ServeError::Internal(other.to_string()),
        }
    }
}

impl From<SliceTooLarge> for ServeError {
    fn from(e: SliceTooLarge) -> Self {
        ServeError::SliceTooLarge(format!("{e} (--max-slice-side, --max-slice-pixels)"))
    }
}

impl From<InstanceError> for ServeError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::Imaging(e) => e.into(),
            InstanceError::TooLarge(e) => e.into(),
            other => ServeError::UnsupportedImage(other.to_string()),
        }
    }
}

impl From<actix_web::error::BlockingError> for ServeError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        ServeError::Internal("the blocking thread pool is gone (shutting down?)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn every_error_has_a_status_code_and_json_body() {
        let cases = [
            (ServeError::EmptyBody, 400, "empty_body"),
            (ServeError::InvalidDicom("x".into()), 400, "invalid_dicom"),
            (ServeError::Unauthorized, 401, "unauthorized"),
            (
                ServeError::UnknownModel("no model named x".into()),
                404,
                "unknown_model",
            ),
            (
                ServeError::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (
                ServeError::UnsupportedMediaType("text/plain".into()),
                415,
                "unsupported_media_type",
            ),
            (
                ServeError::UnsupportedDtype("<i8".into()),
                422,
                "unsupported_dtype",
            ),
            (ServeError::NonFinite, 422, "non_finite"),
            (ServeError::QueueFull { capacity: 4 }, 503, "queue_full"),
            (ServeError::Timeout { seconds: 1.0 }, 504, "timeout"),
            (ServeError::PacsNotConfigured, 501, "pacs_not_configured"),
            (
                ServeError::Inference("boom".into()),
                500,
                "inference_failed",
            ),
        ];
        for (e, status, code) in cases {
            let res = e.error_response();
            assert_eq!(res.status().as_u16(), status, "{e}");
            let bytes = res.into_body().try_into_bytes().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["message"], e.to_string());
            assert_eq!(v["error"]["link"], format!("{DOCS}#{code}"));
        }
    }

    fn body_of(res: HttpResponse) -> serde_json::Value {
        let bytes = res.into_body().try_into_bytes().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_error_body_in_both_forms() {
        let bodies: Vec<serde_json::Value> = ServeError::catalog()
            .into_iter()
            .map(|e| {
                let status = e.status().as_u16();
                let oip = OipError(e.clone()).error_response();
                assert_eq!(oip.status().as_u16(), status);
                assert_eq!(oip.headers().get(CODE_HEADER).unwrap(), e.code());
                serde_json::json!({
                    "status": status,
                    "body": body_of(e.error_response()),
                    "oip_body": body_of(oip),
                })
            })
            .collect();
        insta::assert_json_snapshot!(bodies);
    }

    #[test]
    fn the_readme_table_is_generated_from_the_enum() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- errors:begin -->\n", "<!-- errors:end -->");
        let start = readme
            .find(begin)
            .expect("README has the errors:begin marker")
            + begin.len();
        let stop = readme.find(end).expect("README has the errors:end marker");
        let table = markdown_table();
        if readme[start..stop] != table && std::env::var_os("LDCT_UPDATE_DOCS").is_some() {
            let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert_eq!(
            readme[start..stop],
            table,
            "serve/README.md's error table is stale: run LDCT_UPDATE_DOCS=1 cargo test -p ldct-serve --lib error"
        );
    }

    #[test]
    fn oip_paths_get_the_protocol_form() {
        assert!(is_oip_path("/v2") && is_oip_path("/v2/models/x/infer"));
        assert!(!is_oip_path("/v1/denoise") && !is_oip_path("/v2x"));
        let e = for_path(ServeError::Unauthorized, "/v2/models/m/infer");
        assert_eq!(code_of(&e), Some("unauthorized"));
        let v = body_of(e.error_response());
        assert_eq!(
            v,
            serde_json::json!({"error": "missing or wrong bearer token"})
        );
        let e = for_path(ServeError::Unauthorized, "/v1/models");
        assert_eq!(body_of(e.error_response())["error"]["type"], "auth");
    }

    #[test]
    fn queue_full_asks_to_retry_and_401_names_the_scheme() {
        let res = ServeError::QueueFull { capacity: 4 }.error_response();
        assert_eq!(res.headers().get("retry-after").unwrap(), "1");
        let res = ServeError::Unauthorized.error_response();
        assert!(res
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }

    #[test]
    fn instance_errors_map_to_client_errors() {
        let e = ldct_imaging::instance::decode_ct(b"hello", &ldct_imaging::limits::SliceLimits::CT)
            .err()
            .unwrap();
        assert_eq!(ServeError::from(e).code(), "invalid_dicom");
        let e = InstanceError::MultiFrame(3);
        assert_eq!(ServeError::from(e).code(), "unsupported_image");
    }

    #[test]
    fn imaging_errors_map_to_client_errors() {
        let e: ServeError = ImagingError::DicomCorrupt("cut".into()).into();
        assert_eq!(e.status().as_u16(), 400);
        let e: ServeError = ImagingError::NpyDtype("<i8".into()).into();
        assert_eq!(e.status().as_u16(), 422);
        let e: ServeError = ImagingError::DicomUnsupported("JPEG-LS".into()).into();
        assert_eq!(e.status().as_u16(), 422);
        let e: ServeError = ImagingError::NonFinite.into();
        assert_eq!(e.code(), "non_finite");
    }
}
