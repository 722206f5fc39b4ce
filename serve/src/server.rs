//! Starting and stopping the server.

use std::sync::Arc;

use actix_web::HttpServer;
use anyhow::Context;

use crate::budget::ByteBudget;
use crate::config::Config;
use crate::dicomweb::push;
use crate::dicomweb::service::DicomWeb;
use crate::http::app;
use crate::inference::batcher::{BatchConfig, Batcher};
use crate::inference::device::SessionFactory;
use crate::inference::registry::{Registry, ReloadReport};
use crate::inference::warmup::Warmup;
use crate::jobs::runner;
use crate::state::{AppState, Limits};

/// The state of a configured server before it listens: ONNX Runtime loaded, device
/// chosen, models loaded (possibly none), inference threads started.
pub fn build_state(config: &Config) -> anyhow::Result<AppState> {
    build(config).map(|(state, _)| state)
}

fn build(config: &Config) -> anyhow::Result<(AppState, ReloadReport)> {
    let inflight = config.inflight_bytes().map_err(anyhow::Error::msg)?;
    let rt = ldct_proto::runtime::init().context("loading ONNX Runtime")?;
    tracing::info!(library = %rt.library.display(), "ONNX Runtime ready");
    let factory = SessionFactory::resolve(config)?;
    tracing::info!(device = %factory.device, reason = %factory.reason, "inference device");
    let workers = config.inference_workers as usize;
    let batching = BatchConfig {
        max_batch: config.max_batch as usize,
        max_batch_pixels: usize::try_from(config.max_batch_pixels).unwrap_or(usize::MAX),
        batch_timeout: config.batch_timeout(),
        queue_capacity: config.queue_capacity as usize,
        workers,
    };
    let warmup = Warmup::new(
        config.warmup_sides().map_err(anyhow::Error::msg)?,
        &batching,
    );
    let registry = Arc::new(
        Registry::new(config.models.clone(), factory, workers)
            .with_warmup(warmup)
            .with_alias(config.model_name.clone())
            .with_version_policy(config.version_policy.clone()),
    );
    let report = registry.reload();
    tracing::info!(
        models = report.models.len(),
        rejected = report.rejected.len(),
        folder = %config.models.display(),
        "models loaded"
    );
    let batcher = Arc::new(Batcher::start(batching).context("starting the inference threads")?);
    // `--check` touches no spool or jobs folder.
    let dicomweb = if config.check {
        None
    } else {
        DicomWeb::from_config(config)
            .context("setting up DICOMweb (--pacs-url)")?
            .map(Arc::new)
    };
    let state = AppState {
        derived: Arc::new(ldct_imaging::derived::SeriesLabels {
            series_number_offset: config.derived_series_number_offset,
            disclaimer: config.derived_disclaimer.clone(),
        }),
        dicomweb,
        audit: match &config.audit_log {
            Some(path) => Some(Arc::new(crate::audit::AuditLog::open(path)?)),
            None => None,
        },
        registry,
        batcher,
        strength: config.strength,
        limits: Limits {
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout(),
            body_budget: ByteBudget::new(inflight),
            slice: config.slice_limits(),
            request_timeout: config.request_timeout(),
            api_token: config
                .api_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(Arc::from),
        },
    };
    Ok((state, report))
}

/// `--check`: what would be served, as JSON on stdout; an error when a folder failed.
fn check(config: &Config) -> anyhow::Result<()> {
    let (state, report) = build(config)?;
    state.batcher.shutdown();
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.rejected.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} model folder(s) under {} were rejected",
            report.rejected.len(),
            config.models.display()
        )
    }
}

/// Starts the push worker and the pull job runner on the current actix runtime (a no-op
/// without a PACS).
fn start_dicomweb(state: &AppState) {
    let Some(dw) = state.dicomweb.clone() else {
        return;
    };
    tracing::info!(
        pacs = dw.pacs.as_ref().map_or("none", |p| p.root.as_str()),
        auth = ?dw.pacs.as_ref().map(|p| &p.auth),
        push = %dw.target,
        queued = dw.spool.depth(),
        spool_bytes = dw.spool.bytes(),
        spool_max_bytes = dw.spool.max_bytes(),
        jobs_keep = %dw.jobs.keep(),
        "DICOMweb enabled"
    );
    actix_web::rt::spawn(push::run(dw.spool.clone(), dw.target.clone(), dw.push));
    actix_web::rt::spawn(runner::run(state.clone()));
}

/// Binds `--grpc-bind` and serves the Open Inference Protocol's gRPC service on the
/// current (actix) runtime until the returned sender fires.
async fn start_grpc(
    addr: &str,
    state: &AppState,
    max_message_bytes: usize,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    actix_web::rt::task::JoinHandle<()>,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--grpc-bind)"))?;
    let local = listener.local_addr().context("--grpc-bind address")?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = crate::grpc::server(state.clone(), max_message_bytes);
    // Calls beyond this wait (their messages unread, HTTP/2 flow control holding the
    // senders) so gRPC holds at most --max-inflight-bytes of messages at once.
    let calls = crate::grpc::concurrent_calls(state.limits.body_budget.limit(), max_message_bytes);
    tracing::info!(
        "listening on grpc://{local} (Open Inference Protocol gRPC; {calls} calls at once; auth: {})",
        if state.limits.api_token.is_some() {
            "bearer token"
        } else {
            "none"
        }
    );
    let task = actix_web::rt::spawn(async move {
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(64))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(calls))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    Ok((stop, task))
}

/// The SCP's settings from the flags, checked: `--dimse-bind` needs a PACS to push to,
/// and an allow-list (or `--allow-unauthenticated`) off loopback.
fn dimse_config(
    config: &Config,
    tls: Option<&rustls::ServerConfig>,
) -> anyhow::Result<crate::dimse::scp::ScpConfig> {
    let bind = config.dimse_bind.as_deref().unwrap_or_default();
    if !config.pacs_configured() {
        anyhow::bail!(
            "--dimse-bind needs somewhere to push the derived instances: --pacs-url or \
             --pacs-dimse"
        );
    }
    let allow = crate::dimse::access::AllowList::parse(&config.dimse_allowed_callers)
        .map_err(anyhow::Error::msg)?;
    if allow.is_open() && !config.allow_unauthenticated && !crate::config::bind_is_loopback(bind) {
        anyhow::bail!(
            "--dimse-bind {bind} (not a loopback address) and no --dimse-allowed-callers: \
             anyone who reaches the port could store instances and fill the spool; list \
             the callers or give --allow-unauthenticated"
        );
    }
    Ok(crate::dimse::scp::ScpConfig {
        ae_title: config.dimse_ae_title.clone(),
        allow,
        max_pdu: config.dimse_max_pdu,
        max_associations: config.dimse_max_associations as usize,
        spool_watermark: config.dimse_spool_watermark,
        timeout: std::time::Duration::from_secs_f64(config.dimse_timeout),
        tls: tls.map(|t| {
            // DICOM TLS peers (dcmtk, PACS) send no ALPN: accept them without one.
            let mut t = t.clone();
            t.alpn_protocols.clear();
            Arc::new(t)
        }),
    })
}

/// Runs until SIGINT / SIGTERM: then stops accepting connections, lets in-flight
/// requests finish (up to `--shutdown-timeout`), drains the inference queue and returns.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    config.load_secrets()?;
    if config.check {
        return check(&config);
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let dimse = match &config.dimse_bind {
        Some(_) => Some(dimse_config(&config, tls.as_ref())?),
        None => None,
    };
    let state = build_state(&config)?;
    let batcher = state.batcher.clone();
    let system = actix_web::rt::System::new();
    let result: anyhow::Result<()> = system.block_on(async move {
        start_dicomweb(&state);
        let s = state.clone();
        let mut server =
            HttpServer::new(move || app(s.clone())).shutdown_timeout(config.shutdown_timeout);
        if let Some(n) = config.http_workers {
            server = server.workers(n.max(1));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23(&config.bind, tls),
            None => server.bind(&config.bind),
        }
        .with_context(|| format!("cannot listen on {}", config.bind))?;
        for addr in server.addrs() {
            tracing::info!(
                "listening on {scheme}://{addr} (auth: {})",
                if state.limits.api_token.is_some() {
                    "bearer token"
                } else {
                    "none"
                }
            );
        }
        let grpc = match &config.grpc_bind {
            Some(addr) => Some(start_grpc(addr, &state, config.max_body_bytes).await?),
            None => None,
        };
        let dimse = match (&config.dimse_bind, dimse, &state.dicomweb) {
            (Some(addr), Some(cfg), Some(dw)) => {
                Some(crate::dimse::scp::start(addr, cfg, state.clone(), dw.clone()).await?)
            }
            _ => None,
        };
        let served = server.run().await.context("HTTP server");
        if let Some((stop, task)) = dimse {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some((stop, task)) = grpc {
            // The HTTP side has finished its in-flight requests: let gRPC finish its own.
            let _ = stop.send(());
            let grace = std::time::Duration::from_secs(config.shutdown_timeout);
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("gRPC calls still running after --shutdown-timeout: dropped");
            }
        }
        served?;
        Ok(())
    });
    tracing::info!(
        queued = batcher.queue_len(),
        "HTTP server stopped; draining the inference queue"
    );
    batcher.shutdown();
    tracing::info!("shutdown complete");
    result
}
