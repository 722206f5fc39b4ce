//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! One process-wide set, [`metrics()`]; every name starts with `ldct_`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// `ldct_http_requests_total{route, method, status}`.
    pub requests: IntCounterVec,
    /// `ldct_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `ldct_http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `ldct_errors_total{kind}`: error responses by `error.code`.
    pub errors: IntCounterVec,
    /// `ldct_inference_duration_seconds{model}`: one ONNX Runtime call (a whole batch).
    pub inference_duration: HistogramVec,
    /// `ldct_batch_size{model}`: slices per inference call.
    pub batch_size: HistogramVec,
    /// `ldct_queue_depth`: slices waiting for an inference thread.
    pub queue_depth: IntGauge,
    /// `ldct_model_info{name, version, device}` = 1 for each loaded model.
    pub model_info: IntGaugeVec,
    /// `ldct_models_loaded`.
    pub models_loaded: IntGauge,
    /// `ldct_grpc_requests_total{method, code}`: gRPC calls that run inference or change
    /// the repository, by method and status code.
    pub grpc_requests: IntCounterVec,
    /// `ldct_dimse_associations_total{result}`: DIMSE associations by result
    /// (accepted, refused_caller, refused_busy, refused_spool, failed).
    pub dimse_associations: IntCounterVec,
    /// `ldct_dimse_instances_total{result}`: C-STORE instances received, by result
    /// (accepted, passed, failed).
    pub dimse_instances: IntCounterVec,
    /// `ldct_audit_write_errors_total`: audit records that could not be written.
    pub audit_write_errors: IntCounter,
    /// `ldct_model_warmup_duration_seconds{model}`: how long a model's warmup took
    /// (every session, every warmup shape) before it was published.
    pub warmup_duration: HistogramVec,
    /// `ldct_noise_in_hu{model}` / `ldct_noise_out_hu{model}`: no-reference noise
    /// estimate of the input and of the output of `/v1/denoise`, in HU.
    pub noise_in: HistogramVec,
    pub noise_out: HistogramVec,
    /// `ldct_spool_depth`: derived instances waiting in the spool for the PACS.
    pub spool_depth: IntGauge,
    /// `ldct_spool_bytes`: bytes the spool uses (queued and failed files).
    pub spool_bytes: IntGauge,
    /// `ldct_spool_failed`: instances the PACS refused for good (in `failed/`).
    pub spool_failed: IntGauge,
    /// `ldct_pacs_push_total{result}`: instances per push attempt: `ok` (stored by the
    /// PACS), `failed` (to be retried), `rejected` (refused for good).
    pub pacs_push: IntCounterVec,
    /// `ldct_pacs_request_duration_seconds{op}`: STOW-RS / QIDO-RS / WADO-RS requests to
    /// the PACS (`stow`, `qido`, `wado`).
    pub pacs_request_duration: HistogramVec,
    /// `ldct_stow_instances_total{result}`: instances received by STOW-RS, `accepted`
    /// (spooled) or `failed`.
    pub stow_instances: IntCounterVec,
    /// `ldct_jobs_total{state}`: finished pull jobs by final state.
    pub jobs: IntCounterVec,
}

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const WARMUP_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
const NOISE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 120.0, 200.0,
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(name, e))
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| invalid(name, e))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|e| invalid(name, e))
}

// The metric names and labels above are constants: a failure is a programming error
// caught by the unit tests, never a request-time condition.
fn invalid<T>(name: &str, e: prometheus::Error) -> T {
    panic!("metric {name} is invalid: {e}")
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                "ldct_http_requests_total",
                "HTTP requests by route pattern, method and status code.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                "ldct_http_request_duration_seconds",
                "HTTP request duration by route pattern.",
                &["route"],
                DURATION_BUCKETS,
            ),
            in_flight: gauge(
                "ldct_http_requests_in_flight",
                "HTTP requests being served.",
            ),
            errors: counter(
                "ldct_errors_total",
                "Error responses by kind (the error.code of the JSON body).",
                &["kind"],
            ),
            inference_duration: histogram(
                "ldct_inference_duration_seconds",
                "Duration of one ONNX Runtime call (a whole batch) by model.",
                &["model"],
                DURATION_BUCKETS,
            ),
            batch_size: histogram(
                "ldct_batch_size",
                "Slices per ONNX Runtime call by model.",
                &["model"],
                BATCH_BUCKETS,
            ),
            queue_depth: gauge(
                "ldct_queue_depth",
                "Slices waiting for an inference thread.",
            ),
            model_info: IntGaugeVec::new(
                Opts::new(
                    "ldct_model_info",
                    "Loaded models (value 1) with version and device.",
                ),
                &["name", "version", "device"],
            )
            .unwrap_or_else(|e| invalid("ldct_model_info", e)),
            models_loaded: gauge("ldct_models_loaded", "Number of loaded models."),
            grpc_requests: counter(
                "ldct_grpc_requests_total",
                "gRPC calls that run inference or change the repository, by method and status code.",
                &["method", "code"],
            ),
            dimse_associations: counter(
                "ldct_dimse_associations_total",
                "DIMSE associations by result (accepted, refused_caller, refused_busy, \
                 refused_spool, failed).",
                &["result"],
            ),
            dimse_instances: counter(
                "ldct_dimse_instances_total",
                "Instances received by DIMSE C-STORE, by result (accepted, passed: forwarded \
                 unchanged by a series rule, failed).",
                &["result"],
            ),
            audit_write_errors: IntCounter::new(
                "ldct_audit_write_errors_total",
                "Audit records that could not be written to --audit-log.",
            )
            .unwrap_or_else(|e| invalid("ldct_audit_write_errors_total", e)),
            warmup_duration: histogram(
                "ldct_model_warmup_duration_seconds",
                "Duration of a model's warmup (every session, every warmup shape) before it \
                 was published, by model.",
                &["model"],
                WARMUP_BUCKETS,
            ),
            noise_in: histogram(
                "ldct_noise_in_hu",
                "No-reference noise estimate of denoise inputs in HU, by model.",
                &["model"],
                NOISE_BUCKETS,
            ),
            noise_out: histogram(
                "ldct_noise_out_hu",
                "No-reference noise estimate of denoise outputs in HU, by model.",
                &["model"],
                NOISE_BUCKETS,
            ),
            spool_depth: gauge(
                "ldct_spool_depth",
                "Derived instances waiting in the spool for the PACS.",
            ),
            spool_bytes: gauge(
                "ldct_spool_bytes",
                "Bytes used by the spool (queued and refused instances).",
            ),
            spool_failed: gauge(
                "ldct_spool_failed",
                "Derived instances the PACS refused for good (the spool's failed/ folder).",
            ),
            pacs_push: counter(
                "ldct_pacs_push_total",
                "Derived instances per STOW-RS push attempt to the PACS, by result \
                 (ok, failed: retried later, rejected: refused for good).",
                &["result"],
            ),
            pacs_request_duration: histogram(
                "ldct_pacs_request_duration_seconds",
                "Duration of requests to the PACS by operation (stow, qido, wado).",
                &["op"],
                DURATION_BUCKETS,
            ),
            stow_instances: counter(
                "ldct_stow_instances_total",
                "Instances received by STOW-RS, by result (accepted, failed).",
                &["result"],
            ),
            jobs: counter(
                "ldct_jobs_total",
                "Finished pull jobs by final state (succeeded, failed).",
                &["state"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.inference_duration.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.models_loaded.clone()),
            Box::new(m.warmup_duration.clone()),
            Box::new(m.grpc_requests.clone()),
            Box::new(m.dimse_associations.clone()),
            Box::new(m.dimse_instances.clone()),
            Box::new(m.audit_write_errors.clone()),
            Box::new(m.noise_in.clone()),
            Box::new(m.noise_out.clone()),
            Box::new(m.spool_depth.clone()),
            Box::new(m.spool_bytes.clone()),
            Box::new(m.spool_failed.clone()),
            Box::new(m.pacs_push.clone()),
            Box::new(m.pacs_request_duration.clone()),
            Box::new(m.stow_instances.clone()),
            Box::new(m.jobs.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| invalid("registration", e));
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|e| e.to_string())
    }

    /// Replaces the model info series with the given (name, version, device) triples:
    /// the new series are set before the stale ones are removed, so a scrape during a
    /// reload never finds no model (calls are serialised).
    pub fn set_models(&self, models: &[(String, String, String)]) {
        use prometheus::core::Collector;
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        for (name, version, device) in models {
            self.model_info
                .with_label_values(&[name.as_str(), version.as_str(), device.as_str()])
                .set(1);
        }
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let stale: Vec<[String; 3]> = self
            .model_info
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| [label(m, "name"), label(m, "version"), label(m, "device")])
            .filter(|[n, v, d]| !models.iter().any(|(mn, mv, md)| (mn, mv, md) == (n, v, d)))
            .collect();
        for [n, v, d] in &stale {
            let _ = self
                .model_info
                .remove_label_values(&[n.as_str(), v.as_str(), d.as_str()]);
        }
        self.models_loaded.set(models.len() as i64);
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_help_and_type() {
        let m = metrics();
        m.requests
            .with_label_values(&["/v1/denoise", "POST", "200"])
            .inc();
        m.request_duration
            .with_label_values(&["/v1/denoise"])
            .observe(0.02);
        m.errors.with_label_values(&["queue_full"]).inc();
        m.inference_duration
            .with_label_values(&["tiny"])
            .observe(0.01);
        m.batch_size.with_label_values(&["tiny"]).observe(3.0);
        m.warmup_duration.with_label_values(&["tiny"]).observe(1.5);
        m.grpc_requests
            .with_label_values(&["ModelInfer", "OK"])
            .inc();
        m.dimse_associations.with_label_values(&["accepted"]).inc();
        m.dimse_instances.with_label_values(&["accepted"]).inc();
        m.audit_write_errors.inc_by(0);
        m.noise_in.with_label_values(&["tiny"]).observe(20.0);
        m.noise_out.with_label_values(&["tiny"]).observe(8.0);
        m.pacs_push.with_label_values(&["ok"]).inc();
        m.pacs_request_duration
            .with_label_values(&["stow"])
            .observe(0.1);
        m.stow_instances.with_label_values(&["accepted"]).inc();
        m.jobs.with_label_values(&["succeeded"]).inc();
        m.set_models(&[("tiny".into(), "0.1.0".into(), "cpu".into())]);
        let text = m.render().unwrap();
        for name in [
            "ldct_http_requests_total",
            "ldct_http_request_duration_seconds",
            "ldct_http_requests_in_flight",
            "ldct_errors_total",
            "ldct_inference_duration_seconds",
            "ldct_batch_size",
            "ldct_queue_depth",
            "ldct_model_info",
            "ldct_models_loaded",
            "ldct_model_warmup_duration_seconds",
            "ldct_grpc_requests_total",
            "ldct_dimse_associations_total",
            "ldct_dimse_instances_total",
            "ldct_audit_write_errors_total",
            "ldct_noise_in_hu",
            "ldct_noise_out_hu",
            "ldct_spool_depth",
            "ldct_spool_bytes",
            "ldct_spool_failed",
            "ldct_pacs_push_total",
            "ldct_pacs_request_duration_seconds",
            "ldct_stow_instances_total",
            "ldct_jobs_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("ldct_model_info{device=\"cpu\",name=\"tiny\",version=\"0.1.0\"} 1"));
        m.set_models(&[]);
        assert!(!m.render().unwrap().contains("name=\"tiny\",version"));
    }
}
