//! The one error type of the HTTP layer: every failure maps to a status code and a
//! JSON body `{"error": {"code": "...", "message": "..."}}`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use ldct_imaging::ImagingError;
use serde::Serialize;

/// Seconds a client is asked to wait (`Retry-After`) when the queue is full.
pub const RETRY_AFTER_SECS: u32 = 1;

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
            ServeError::UnsupportedMediaType(_) => "unsupported_media_type",
            ServeError::UnsupportedDtype(_) => "unsupported_dtype",
            ServeError::UnsupportedShape(_) => "unsupported_shape",
            ServeError::NonFinite => "non_finite",
            ServeError::UnsupportedImage(_) => "unsupported_image",
            ServeError::QueueFull { .. } => "queue_full",
            ServeError::ShuttingDown => "shutting_down",
            ServeError::Timeout { .. } => "timeout",
            ServeError::Inference(_) => "inference_failed",
            ServeError::PacsNotConfigured => "pacs_not_configured",
            ServeError::Internal(_) => "internal",
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
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::UnsupportedDtype(_)
            | ServeError::UnsupportedShape(_)
            | ServeError::NonFinite
            | ServeError::UnsupportedImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::QueueFull { .. } | ServeError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Inference(_) | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::PacsNotConfigured => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        }
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
}

impl ResponseError for ServeError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status());
        match self {
            ServeError::QueueFull { .. } | ServeError::ShuttingDown => {
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
        res.json(self.body())
    }
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
        }
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
