//! The DICOMweb client to the PACS (reqwest on actix's tokio runtime, rustls with the
//! ring provider): STOW-RS (`POST {root}/studies`, multipart/related, with a
//! Content-Length, never chunked), QIDO-RS (`GET {root}/studies/{study}/series`) and
//! WADO-RS (`GET {root}/studies/{study}/series/{series}`, multipart/related
//! application/dicom).
//!
//! reqwest rather than awc: actix-http's client reads no body from an HTTP/1.1 response
//! that has neither a Content-Length nor chunked encoding, and that is how Orthanc sends
//! WADO-RS multipart answers (`Connection: close`, the body up to EOF).
//!
//! Each task (the push worker, a pull job) makes its own [`PacsClient`] from the shared
//! [`PacsConfig`], so connections stay on the runtime that uses them. Proxy environment
//! variables are not used: the PACS is reached directly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use serde_json::Value;

use super::multipart::{self, MediaType};
use super::process::FailureReason;
use crate::metrics::metrics;

/// How ldct authenticates to the PACS.
#[derive(Clone, Default)]
pub enum PacsAuth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl std::fmt::Debug for PacsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.write_str(match self {
            PacsAuth::None => "none",
            PacsAuth::Basic { .. } => "basic",
            PacsAuth::Bearer(_) => "bearer",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PacsConfigError {
    #[error("--pacs-url {0:?}: {1}")]
    Url(String, String),
    #[error("--pacs-ca-cert {path}: {message}")]
    CaCert { path: String, message: String },
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// Where and how to reach the PACS.
#[derive(Clone)]
pub struct PacsConfig {
    /// The DICOMweb root, without a trailing slash (`http://orthanc:8042/dicom-web`).
    pub root: String,
    pub auth: PacsAuth,
    /// Longest wait for one request (response and body).
    pub timeout: Duration,
    /// Largest WADO-RS series accepted, in bytes.
    pub max_fetch_bytes: usize,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PacsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacsConfig")
            .field("root", &self.root)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PacsConfig {
    /// Checks the URL and builds the TLS configuration (Mozilla's roots, plus the PEM
    /// certificates of `ca_cert` when given).
    pub fn new(
        url: &str,
        auth: PacsAuth,
        timeout: Duration,
        max_fetch_bytes: usize,
        ca_cert: Option<&Path>,
    ) -> Result<Self, PacsConfigError> {
        let root = url.trim().trim_end_matches('/').to_owned();
        let uri: actix_web::http::Uri = root
            .parse()
            .map_err(|e| PacsConfigError::Url(url.to_owned(), format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(PacsConfigError::Url(
                url.to_owned(),
                "need an http:// or https:// URL with a host".into(),
            ));
        }
        if uri.query().is_some() {
            return Err(PacsConfigError::Url(
                url.to_owned(),
                "the DICOMweb root cannot have a query string".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_cert {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let err = |message: String| PacsConfigError::CaCert {
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PacsConfigError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            root,
            auth,
            timeout,
            max_fetch_bytes,
            tls: Arc::new(tls),
        })
    }

    /// The WADO-RS URL of an instance.
    pub fn instance_url(&self, study: &str, series: &str, sop: &str) -> String {
        format!(
            "{}/studies/{study}/series/{series}/instances/{sop}",
            self.root
        )
    }

    pub fn study_url(&self, study: &str) -> String {
        format!("{}/studies/{study}", self.root)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacsError {
    #[error("cannot reach the PACS: {0}")]
    Transport(String),
    #[error("the PACS answered {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status { status: u16, message: String },
    #[error("invalid answer from the PACS: {0}")]
    Invalid(String),
}

impl PacsError {
    /// What may be logged above debug level: the kind and status, never the PACS's
    /// message (it may name studies or patients).
    pub fn summary(&self) -> String {
        match self {
            PacsError::Transport(m) => format!("cannot reach the PACS: {m}"),
            PacsError::Status { status, .. } => format!("the PACS answered {status}"),
            PacsError::Invalid(_) => "invalid answer from the PACS".into(),
        }
    }

    /// Worth retrying soon: the PACS is unreachable, overloaded or failing.
    pub fn is_transient(&self) -> bool {
        match self {
            PacsError::Transport(_) => true,
            PacsError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            PacsError::Invalid(_) => false,
        }
    }

    /// For a STOW-RS request: the PACS refused the request's content (not a transient
    /// or configuration problem), so retrying the same instances cannot help.
    pub fn refuses_content(&self) -> bool {
        matches!(
            self,
            PacsError::Status {
                status: 400 | 409 | 413 | 415 | 422,
                ..
            }
        )
    }
}

/// What the PACS did with one instance of a STOW-RS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceOutcome {
    Stored,
    /// Not stored now (out of resources): try again later.
    Retry(String),
    /// Refused for good.
    Rejected(String),
}

/// A series found by QIDO-RS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    pub series_instance_uid: String,
    pub modality: Option<String>,
    pub description: Option<String>,
    pub instances: Option<usize>,
}

/// The first string value of attribute `tag` ("GGGGEEEE") of a DICOM JSON item.
pub fn json_str(item: &Value, tag: &str) -> Option<String> {
    let v = item.get(tag)?.get("Value")?.get(0)?;
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first numeric value of attribute `tag` of a DICOM JSON item.
pub fn json_u64(item: &Value, tag: &str) -> Option<u64> {
    let v = item.get(tag)?.get("Value")?.get(0)?;
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn items<'a>(v: &'a Value, tag: &str) -> impl Iterator<Item = &'a Value> {
    v.get(tag)
        .and_then(|a| a.get("Value"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A short, printable excerpt of an error body.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a STOW-RS response: per instance of `sops` (in order), what the PACS did.
pub fn stow_outcome(
    status: u16,
    body: &[u8],
    sops: &[String],
) -> Result<Vec<InstanceOutcome>, PacsError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let mut failed: HashMap<String, u64> = HashMap::new();
    let mut referenced: Vec<String> = Vec::new();
    if let Some(v) = &json {
        for item in items(v, "00081198") {
            if let Some(sop) = json_str(item, "00081155") {
                failed.insert(sop, json_u64(item, "00081197").unwrap_or(0x0110));
            }
        }
        referenced.extend(items(v, "00081199").filter_map(|i| json_str(i, "00081155")));
    }
    let by_code = |code: u64| {
        let msg = format!("the PACS refused it with Failure Reason 0x{code:04X}");
        if code & 0xFF00 == u64::from(FailureReason::OutOfResources.code()) {
            InstanceOutcome::Retry(msg)
        } else {
            InstanceOutcome::Rejected(msg)
        }
    };
    match status {
        200..=299 => Ok(sops
            .iter()
            .map(|s| match failed.get(s) {
                Some(&code) => by_code(code),
                None => InstanceOutcome::Stored,
            })
            .collect()),
        409 if json.is_some() => Ok(sops
            .iter()
            .map(|s| match failed.get(s) {
                Some(&code) => by_code(code),
                None if referenced.contains(s) => InstanceOutcome::Stored,
                None => InstanceOutcome::Rejected("409 Conflict: not stored by the PACS".into()),
            })
            .collect()),
        _ => Err(PacsError::Status {
            status,
            message: excerpt(body),
        }),
    }
}

/// A client for one task (see the module docs).
pub struct PacsClient {
    cfg: PacsConfig,
    http: Result<reqwest::Client, String>,
}

fn transport(e: reqwest::Error) -> PacsError {
    // Without the URL (it names the study and series); the chain says why.
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    PacsError::Transport(msg)
}

impl PacsClient {
    pub fn new(cfg: &PacsConfig) -> Self {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*cfg.tls).clone())
            .connect_timeout(cfg.timeout.min(Duration::from_secs(30)))
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string());
        Self {
            cfg: cfg.clone(),
            http,
        }
    }

    pub fn config(&self) -> &PacsConfig {
        &self.cfg
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, PacsError> {
        let http = self
            .http
            .as_ref()
            .map_err(|e| PacsError::Transport(format!("HTTP client: {e}")))?;
        let req = http.request(method, format!("{}{path}", self.cfg.root));
        Ok(match &self.cfg.auth {
            PacsAuth::None => req,
            PacsAuth::Basic { user, password } => req.basic_auth(user, Some(password)),
            PacsAuth::Bearer(token) => req.bearer_auth(token),
        })
    }

    fn observe(op: &str, started: Instant) {
        metrics()
            .pacs_request_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The response body, at most `limit` bytes (`None`: over the limit).
    async fn body(res: &mut reqwest::Response, limit: usize) -> Result<Option<Vec<u8>>, PacsError> {
        let mut out = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(transport)? {
            if out.len() + chunk.len() > limit {
                return Ok(None);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// STOW-RS of `parts` (Part 10 files whose SOP Instance UIDs are `sops`) in one
    /// request with a Content-Length (never chunked).
    pub async fn stow(
        &self,
        parts: &[Bytes],
        sops: &[String],
    ) -> Result<Vec<InstanceOutcome>, PacsError> {
        let boundary = multipart::boundary_for(parts);
        let body = multipart::write(parts, "application/dicom", &boundary);
        let started = Instant::now();
        let sent = self
            .request(reqwest::Method::POST, "/studies")?
            .header(
                reqwest::header::CONTENT_TYPE,
                multipart::content_type("application/dicom", &boundary),
            )
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await;
        let mut res = match sent {
            Ok(r) => r,
            Err(e) => {
                Self::observe("stow", started);
                return Err(transport(e));
            }
        };
        let status = res.status().as_u16();
        let body = Self::body(&mut res, 16 << 20)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        Self::observe("stow", started);
        stow_outcome(status, &body, sops)
    }

    /// QIDO-RS: the CT series of `study` (only `series` when given).
    pub async fn find_ct_series(
        &self,
        study: &str,
        series: Option<&str>,
    ) -> Result<Vec<SeriesInfo>, PacsError> {
        let mut query = vec![
            ("Modality", "CT"),
            ("includefield", "0008103E"),
            ("includefield", "00201209"),
        ];
        if let Some(s) = series {
            query.push(("SeriesInstanceUID", s));
        }
        let started = Instant::now();
        let mut res = self
            .request(reqwest::Method::GET, &format!("/studies/{study}/series"))?
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .query(&query)
            .send()
            .await
            .map_err(transport)?;
        let status = res.status().as_u16();
        let body = Self::body(&mut res, 16 << 20)
            .await?
            .ok_or_else(|| PacsError::Invalid("QIDO-RS answer over 16 MiB".into()))?;
        Self::observe("qido", started);
        if status == 204 || (status == 404 && body.is_empty()) {
            return Ok(Vec::new());
        }
        if !(200..300).contains(&status) {
            return Err(PacsError::Status {
                status,
                message: excerpt(&body),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| PacsError::Invalid(format!("QIDO-RS answer is not JSON: {e}")))?;
        let list = v
            .as_array()
            .ok_or_else(|| PacsError::Invalid("QIDO-RS answer is not a JSON array".into()))?;
        Ok(list
            .iter()
            .filter_map(|item| {
                Some(SeriesInfo {
                    series_instance_uid: json_str(item, "0020000E")?,
                    modality: json_str(item, "00080060"),
                    description: json_str(item, "0008103E"),
                    instances: json_u64(item, "00201209").map(|n| n as usize),
                })
            })
            .collect())
    }

    /// WADO-RS: every instance of a series, as Part 10 files (in the stored transfer
    /// syntax when the PACS supports `transfer-syntax=*`).
    pub async fn retrieve_series(
        &self,
        study: &str,
        series: &str,
    ) -> Result<Vec<Bytes>, PacsError> {
        let path = format!("/studies/{study}/series/{series}");
        let accepts = [
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            "multipart/related; type=\"application/dicom\"",
        ];
        let mut last = None;
        for accept in accepts {
            let started = Instant::now();
            let mut res = self
                .request(reqwest::Method::GET, &path)?
                .header(reqwest::header::ACCEPT, accept)
                .send()
                .await
                .map_err(transport)?;
            let status = res.status().as_u16();
            let content_type = res
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = Self::body(&mut res, self.cfg.max_fetch_bytes)
                .await?
                .ok_or_else(|| {
                    PacsError::Invalid(format!(
                        "the series is larger than --pacs-max-fetch-bytes ({} bytes)",
                        self.cfg.max_fetch_bytes
                    ))
                })?;
            Self::observe("wado", started);
            if matches!(status, 400 | 406) {
                // The PACS does not do `transfer-syntax=*`: ask for its default.
                last = Some(PacsError::Status {
                    status,
                    message: excerpt(&body),
                });
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(PacsError::Status {
                    status,
                    message: excerpt(&body),
                });
            }
            let (_, boundary) = multipart::related(&content_type)
                .map_err(|e| PacsError::Invalid(format!("WADO-RS answer: {e}")))?;
            let body = Bytes::from(body);
            let parts = multipart::parse(&body, &boundary, usize::MAX)
                .map_err(|e| PacsError::Invalid(format!("WADO-RS answer: {e}")))?;
            return parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| match p.media_type() {
                    Some(MediaType { essence, .. })
                        if essence != "application/dicom"
                            && essence != "application/octet-stream" =>
                    {
                        Err(PacsError::Invalid(format!(
                            "WADO-RS part {i} is {essence}, not application/dicom"
                        )))
                    }
                    _ => Ok(p.body),
                })
                .collect();
        }
        Err(last.unwrap_or_else(|| PacsError::Invalid("no WADO-RS answer".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stow_responses_map_to_outcomes() {
        let sops = vec!["1.1".to_owned(), "1.2".to_owned(), "1.3".to_owned()];
        let body = json!({
            "00081198": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081197": {"vr": "US", "Value": [0xA700]}},
                {"00081155": {"vr": "UI", "Value": ["1.3"]}, "00081197": {"vr": "US", "Value": [0xC000]}}
            ]},
            "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.1"]}}]}
        })
        .to_string();
        let out = stow_outcome(202, body.as_bytes(), &sops).unwrap();
        assert_eq!(out[0], InstanceOutcome::Stored);
        assert!(matches!(out[1], InstanceOutcome::Retry(_)));
        assert!(matches!(out[2], InstanceOutcome::Rejected(_)));
        // 200 with an empty body: all stored.
        assert!(stow_outcome(200, b"", &sops)
            .unwrap()
            .iter()
            .all(|o| *o == InstanceOutcome::Stored));
        // 409: what is not referenced was not stored.
        let out = stow_outcome(409, body.as_bytes(), &sops).unwrap();
        assert_eq!(out[0], InstanceOutcome::Stored);
        // Whole-request failures are errors, classified for retrying.
        let e = stow_outcome(503, b"busy", &sops).unwrap_err();
        assert!(e.is_transient() && !e.refuses_content());
        let e = stow_outcome(401, b"", &sops).unwrap_err();
        assert!(!e.is_transient() && !e.refuses_content());
        let e = stow_outcome(413, b"too big", &sops).unwrap_err();
        assert!(e.refuses_content());
        assert_eq!(e.to_string(), "the PACS answered 413: too big", "{e}");
    }

    #[test]
    fn config_checks_the_url_and_hides_secrets() {
        let ok = PacsConfig::new(
            "http://orthanc:8042/dicom-web/",
            PacsAuth::Basic {
                user: "u".into(),
                password: "secret".into(),
            },
            Duration::from_secs(5),
            1 << 20,
            None,
        )
        .unwrap();
        assert_eq!(ok.root, "http://orthanc:8042/dicom-web");
        assert!(!format!("{ok:?}").contains("secret"));
        for bad in ["ftp://x/dicom-web", "orthanc:8042", "http://x/dw?a=1", ""] {
            assert!(
                PacsConfig::new(bad, PacsAuth::None, Duration::from_secs(1), 1, None).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            ok.instance_url("1.2", "1.3", "1.4"),
            "http://orthanc:8042/dicom-web/studies/1.2/series/1.3/instances/1.4"
        );
    }
}
