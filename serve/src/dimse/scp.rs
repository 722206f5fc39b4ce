//! The C-ECHO and C-STORE SCP (`--dimse-bind`).
//!
//! On each connection, before any data is read: the peer's address against
//! `--dimse-allowed-callers`, the number of open associations against
//! `--dimse-max-associations` and the spool against its watermark; a refused
//! association gets an A-ASSOCIATE-RJ (permanent for a caller not on the list;
//! transient when busy or the spool is filling up, so the sender retries later) and
//! nothing it sends is ever accepted. (Under DICOM TLS a busy server closes the
//! connection before the handshake instead.) Then the association request: the
//! called AE title must be ours and the calling one on the list; presentation contexts
//! are accepted for Verification, CT Image Storage and Enhanced CT Image Storage in the
//! transfer syntaxes the DICOM reader decodes.
//!
//! Each C-STORE's data set is held in memory within the slice limits and the
//! server-wide body budget (`--max-inflight-bytes`), decoded and checked like a STOW-RS
//! part, denoised, and its derived instance written to the spool; only then does the
//! C-STORE response say success. Failures answer the status of the STOW-RS failure
//! reason (A700 out of resources, 0122 SOP class not supported, C000 cannot understand,
//! 0110 processing failure) with an Error Comment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use dicom_object::FileMetaTableBuilder;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, UserIdentity,
};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::access::{AllowList, Refusal};
use super::message::{self, status, Command};
use crate::audit::Origin;
use crate::budget::Reservation;
use crate::dicomweb::process::{self, FailureReason, Rejected};
use crate::dicomweb::rules::Verdict;
use crate::dicomweb::service::DicomWeb;
use crate::metrics::metrics;
use crate::state::AppState;

/// The SCP's settings (from the flags).
#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    pub allow: AllowList,
    pub max_pdu: u32,
    pub max_associations: usize,
    /// Fraction of the spool's bound above which associations are refused.
    pub spool_watermark: f64,
    pub timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Scp {
    cfg: ScpConfig,
    state: AppState,
    dw: Arc<DicomWeb>,
    permits: Arc<Semaphore>,
}

/// The calling/called AE title check of dicom-ul's association negotiation.
struct Titles(AllowList);

impl AccessControl for Titles {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        match self
            .0
            .check_titles(this_ae_title, calling_ae_title, called_ae_title)
        {
            Ok(()) => Ok(()),
            Err(Refusal::CalledAeTitle) => {
                Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            }
            Err(_) => {
                metrics()
                    .dimse_associations
                    .with_label_values(&["refused_caller"])
                    .inc();
                tracing::warn!(
                    calling = calling_ae_title.trim(),
                    "DIMSE association refused: calling AE title not allowed"
                );
                Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
            }
        }
    }
}

/// Binds `addr` and serves associations on the current (actix) runtime until the
/// returned sender fires (open associations then finish their current message).
pub async fn start(
    addr: &str,
    cfg: ScpConfig,
    state: AppState,
    dw: Arc<DicomWeb>,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    actix_web::rt::task::JoinHandle<()>,
)> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--dimse-bind)"))?;
    let local = listener.local_addr().context("--dimse-bind address")?;
    tracing::info!(
        "listening on dicom{}://{local} (DIMSE C-ECHO / C-STORE SCP, AE title {}, callers: {}, \
         at most {} associations)",
        if cfg.tls.is_some() { "s" } else { "" },
        cfg.ae_title,
        if cfg.allow.is_open() {
            "anyone".to_owned()
        } else {
            format!(
                "{} AE title(s), {} network(s)",
                cfg.allow.ae_titles.len(),
                cfg.allow.networks.len()
            )
        },
        cfg.max_associations
    );
    let scp = Arc::new(Scp {
        permits: Arc::new(Semaphore::new(cfg.max_associations)),
        cfg,
        state,
        dw,
    });
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = actix_web::rt::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let scp = scp.clone();
                    actix_web::rt::spawn(async move { scp.connection(socket, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DIMSE accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((stop, task))
}

/// Reads the A-ASSOCIATE-RQ (bounded by the PDU size and the timeout) and answers an
/// A-ASSOCIATE-RJ: the peer learns why and nothing it sends is accepted.
async fn reject(mut socket: TcpStream, max_pdu: u32, timeout: Duration, rj: AssociationRJ) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = bytes::BytesMut::with_capacity(4096);
        loop {
            let mut cursor = std::io::Cursor::new(&buf[..]);
            match dicom_ul::read_pdu(&mut cursor, max_pdu, true) {
                Ok(Some(_)) => return true,
                Ok(None) => {}
                Err(_) => return false,
            }
            match socket.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
    };
    if tokio::time::timeout(timeout, read).await != Ok(true) {
        return;
    }
    let mut out = Vec::new();
    if dicom_ul::write_pdu(&mut out, &Pdu::AssociationRJ(rj)).is_ok() {
        let _ = tokio::time::timeout(timeout, socket.write_all(&out)).await;
        let _ = socket.shutdown().await;
    }
}

fn rj(result: AssociationRJResult, source: AssociationRJSource) -> AssociationRJ {
    AssociationRJ { result, source }
}

impl Scp {
    /// Why this connection is refused before its association request is read (the
    /// metric's result label and the A-ASSOCIATE-RJ), or `None`: the peer's address,
    /// then a free association slot (`has_slot`), then the spool's watermark.
    fn refusal(&self, peer: SocketAddr, has_slot: bool) -> Option<(&'static str, AssociationRJ)> {
        let busy = |reason| {
            rj(
                AssociationRJResult::Transient,
                AssociationRJSource::ServiceProviderPresentation(reason),
            )
        };
        let spool = &self.dw.spool;
        if self.cfg.allow.check_address(peer.ip()).is_err() {
            tracing::warn!(peer = %peer.ip(), "DIMSE association refused: address not allowed");
            let r = rj(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
            );
            Some(("refused_caller", r))
        } else if !has_slot {
            tracing::warn!(
                max = self.cfg.max_associations,
                "DIMSE association refused: --dimse-max-associations reached"
            );
            let r = busy(AssociationRJServiceProviderPresentationReason::LocalLimitExceeded);
            Some(("refused_busy", r))
        } else if spool.bytes() as f64 > self.cfg.spool_watermark * spool.max_bytes() as f64 {
            tracing::warn!(
                spool_bytes = spool.bytes(),
                spool_max_bytes = spool.max_bytes(),
                "DIMSE association refused: the spool is above its watermark (the PACS is \
                 not taking instances fast enough)"
            );
            let r = busy(AssociationRJServiceProviderPresentationReason::TemporaryCongestion);
            Some(("refused_spool", r))
        } else {
            None
        }
    }

    async fn connection(self: Arc<Self>, socket: TcpStream, peer: SocketAddr) {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if let Some((result, r)) = self.refusal(peer, permit.is_some()) {
            // A refused connection holds no association slot while it is answered.
            drop(permit);
            metrics()
                .dimse_associations
                .with_label_values(&[result])
                .inc();
            if self.cfg.tls.is_none() {
                reject(socket, self.cfg.max_pdu, self.cfg.timeout, r).await;
            }
            return;
        }
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(Titles(self.cfg.allow.clone()))
            .ae_title(self.cfg.ae_title.as_str())
            .max_pdu_length(self.cfg.max_pdu)
            .strict(true)
            .read_timeout(self.cfg.timeout)
            .with_abstract_syntax(message::VERIFICATION)
            .with_abstract_syntax(message::CT_IMAGE_STORAGE)
            .with_abstract_syntax(message::ENHANCED_CT_IMAGE_STORAGE);
        for ts in ldct_imaging::dicom::supported_transfer_syntaxes() {
            options = options.with_transfer_syntax(ts);
        }
        match &self.cfg.tls {
            Some(tls) => {
                let options = options.tls_config(tls.clone());
                match options.establish_tls_async(socket).await {
                    Ok(a) => self.serve(a, peer).await,
                    Err(e) => failed_association(peer, &e),
                }
            }
            None => match options.establish_async(socket).await {
                Ok(a) => self.serve(a, peer).await,
                Err(e) => failed_association(peer, &e),
            },
        }
        drop(permit);
    }

    async fn serve<S>(&self, mut assoc: AsyncServerAssociation<S>, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        metrics()
            .dimse_associations
            .with_label_values(&["accepted"])
            .inc();
        let calling = assoc.peer_ae_title().trim().to_owned();
        let origin = Origin::new("dimse", format!("{calling}@{peer}"));
        tracing::info!(calling = %calling, peer = %peer, "DIMSE association accepted");
        let mut incoming = Incoming::new(
            self.state.limits.body_budget.reservation(),
            self.state.limits.slice.max_data_set_bytes(),
        );
        let mut stored = 0usize;
        loop {
            let pdu = match assoc.receive().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(error = %e, calling = %calling, "DIMSE association ended without release");
                    return;
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        let Some(step) = incoming.take(pdv) else {
                            continue;
                        };
                        let reply = match step {
                            Step::Command(c) if c.command_field == message::C_ECHO_RQ => {
                                message::echo_response(c.message_id.unwrap_or(0), status::SUCCESS)
                            }
                            Step::Command(c) => unsupported(&c),
                            Step::Store {
                                pc,
                                command,
                                data,
                                overflow,
                            } => {
                                let ts = assoc
                                    .presentation_contexts()
                                    .iter()
                                    .find(|p| p.id == pc)
                                    .map(|p| p.transfer_syntax.trim_end_matches('\0').to_owned());
                                let (code, comment) =
                                    self.store(&command, ts, data, overflow, &origin).await;
                                incoming.reservation_mut().release();
                                if code == status::SUCCESS {
                                    stored += 1;
                                }
                                message::store_response(
                                    command.message_id.unwrap_or(0),
                                    command.affected_sop_class_uid.as_deref().unwrap_or(""),
                                    command.affected_sop_instance_uid.as_deref().unwrap_or(""),
                                    code,
                                    comment.as_deref(),
                                )
                            }
                            Step::Protocol(e) => {
                                tracing::warn!(calling = %calling, error = %e, "DIMSE protocol error: aborting the association");
                                let _ = assoc.abort().await;
                                return;
                            }
                        };
                        let pc = incoming.last_context;
                        let sent = assoc
                            .send(&Pdu::PData {
                                data: vec![PDataValue {
                                    presentation_context_id: pc,
                                    value_type: PDataValueType::Command,
                                    is_last: true,
                                    data: reply,
                                }],
                            })
                            .await;
                        if let Err(e) = sent {
                            tracing::info!(error = %e, "cannot answer the DIMSE peer");
                            return;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    tracing::info!(calling = %calling, stored, "DIMSE association released");
                    return;
                }
                Pdu::AbortRQ { .. } => {
                    tracing::info!(calling = %calling, stored, "DIMSE association aborted by the peer");
                    return;
                }
                other => {
                    tracing::warn!(pdu = %other.short_description(), "unexpected PDU: aborting the association");
                    let _ = assoc.abort().await;
                    return;
                }
            }
        }
    }

    /// One received instance: checked, denoised, spooled. The C-STORE status and
    /// comment.
    async fn store(
        &self,
        command: &Command,
        transfer_syntax: Option<String>,
        data: Vec<u8>,
        overflow: Option<String>,
        origin: &Origin,
    ) -> (u16, Option<String>) {
        let count = |r: &str| metrics().dimse_instances.with_label_values(&[r]).inc();
        let fail = |code: u16, message: String| {
            count("failed");
            tracing::debug!(status = format!("0x{code:04X}"), message = %message, "C-STORE failed");
            (code, Some(message))
        };
        if let Some(why) = overflow {
            return fail(status::OUT_OF_RESOURCES, why);
        }
        let class = command.affected_sop_class_uid.as_deref().unwrap_or("");
        if class == message::ENHANCED_CT_IMAGE_STORAGE {
            return fail(
                status::SOP_CLASS_NOT_SUPPORTED,
                "Enhanced CT (multi-frame) is not supported: send CT Image Storage".into(),
            );
        }
        if class != message::CT_IMAGE_STORAGE {
            return fail(
                status::SOP_CLASS_NOT_SUPPORTED,
                format!("SOP class {class} is not CT Image Storage"),
            );
        }
        let (Some(ts), Some(sop)) = (transfer_syntax, command.affected_sop_instance_uid.clone())
        else {
            return fail(
                status::CANNOT_UNDERSTAND,
                "no transfer syntax or SOP instance".into(),
            );
        };
        let model = match self.state.registry.get(None) {
            Ok(m) => m,
            Err(e) => return fail(status::OUT_OF_RESOURCES, e.to_string()),
        };
        let slice = self.state.limits.slice;
        let class = class.to_owned();
        let decoded = web::block(move || {
            let file = part10(&class, &sop, &ts, &data)
                .map_err(|e| Rejected::unknown(FailureReason::CannotUnderstand, e))?;
            process::decode_part(&file, None, None, &slice).map(|s| (s, file))
        })
        .await;
        let (source, file) = match decoded {
            Ok(Ok(s)) => s,
            Ok(Err(r)) => return fail(r.reason.code(), r.message),
            Err(e) => return fail(status::OUT_OF_RESOURCES, e.to_string()),
        };
        match self.dw.rules.verdict(&source.obj) {
            Verdict::Denoise => {}
            Verdict::Pass(why) => {
                tracing::debug!(%why, "C-STORE instance passed through unchanged");
                return match process::pass_through(&self.dw.spool, source, file.into()).await {
                    Ok(_) => {
                        count("passed");
                        (status::SUCCESS, None)
                    }
                    Err(r) => fail(r.reason.code(), r.message),
                };
            }
            Verdict::Refuse(why) => {
                return fail(
                    status::PROCESSING_FAILURE,
                    format!("refused by a series rule: {why}"),
                )
            }
        }
        let spooling = self.state.spooling(&self.dw.spool);
        let out = process::denoise_and_spool(
            &spooling,
            &model,
            vec![source],
            self.state.strength,
            origin,
        )
        .await;
        match out.into_iter().next() {
            Some(Ok(_)) => {
                count("accepted");
                (status::SUCCESS, None)
            }
            Some(Err(r)) => fail(r.reason.code(), r.message),
            None => fail(status::PROCESSING_FAILURE, "no result".into()),
        }
    }
}

fn failed_association(peer: SocketAddr, e: &dicom_ul::association::Error) {
    metrics()
        .dimse_associations
        .with_label_values(&["failed"])
        .inc();
    tracing::info!(peer = %peer, error = %e, "DIMSE association not established");
}

fn unsupported(c: &Command) -> Vec<u8> {
    tracing::debug!(command = %c, "unsupported DIMSE command");
    message::response(
        c.command_field,
        c.message_id.unwrap_or(0),
        c.affected_sop_class_uid.as_deref().unwrap_or(""),
        c.affected_sop_instance_uid.as_deref().unwrap_or(""),
        status::UNRECOGNIZED_OPERATION,
        Some("ldct accepts C-ECHO and C-STORE only"),
    )
}

/// A received data set as a Part 10 file (the file meta group the reader expects, with
/// the negotiated transfer syntax).
pub(crate) fn part10(class: &str, sop: &str, ts: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(ts)
        .build()
        .map_err(|e| format!("cannot describe the received data set: {e}"))?;
    let mut file = Vec::with_capacity(data.len() + 640);
    // The preamble too: a passed-through instance goes to the PACS as this file.
    file.extend_from_slice(&[0u8; 128]);
    file.extend_from_slice(b"DICM");
    meta.write(&mut file)
        .map_err(|e| format!("cannot describe the received data set: {e}"))?;
    file.extend_from_slice(data);
    Ok(file)
}

/// What a P-DATA value completed.
pub(crate) enum Step {
    /// A command without a data set (C-ECHO, or an unsupported one).
    Command(Command),
    /// A C-STORE with its data set (or why it was not kept).
    Store {
        pc: u8,
        command: Command,
        data: Vec<u8>,
        overflow: Option<String>,
    },
    Protocol(String),
}

/// Reassembles commands and data sets from P-DATA values, within bounds: the command at
/// most [`message::MAX_COMMAND_BYTES`], the data set at most the slice limits' data-set
/// size and whatever the body budget grants (beyond either the rest of the data set is
/// read and dropped, and the C-STORE answered out of resources).
pub(crate) struct Incoming {
    command: Vec<u8>,
    pending: Option<(u8, Command)>,
    data: Vec<u8>,
    overflow: Option<String>,
    reservation: Reservation,
    max_data: u64,
    last_context: u8,
}

impl Incoming {
    pub(crate) fn new(reservation: Reservation, max_data: u64) -> Self {
        Self {
            command: Vec::new(),
            pending: None,
            data: Vec::new(),
            overflow: None,
            reservation,
            max_data,
            last_context: 1,
        }
    }

    /// The body budget this association holds (released after each answered C-STORE).
    pub(crate) fn reservation_mut(&mut self) -> &mut Reservation {
        &mut self.reservation
    }

    pub(crate) fn take(&mut self, pdv: PDataValue) -> Option<Step> {
        self.last_context = pdv.presentation_context_id;
        match pdv.value_type {
            PDataValueType::Command => {
                if self.pending.is_some() {
                    return Some(Step::Protocol(
                        "a command arrived before the previous data set was complete".into(),
                    ));
                }
                if self.command.len() + pdv.data.len() > message::MAX_COMMAND_BYTES {
                    return Some(Step::Protocol("the command set is too large".into()));
                }
                self.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return None;
                }
                let bytes = std::mem::take(&mut self.command);
                let c = match message::decode(&bytes) {
                    Ok(c) => c,
                    Err(e) => return Some(Step::Protocol(e.to_string())),
                };
                if c.has_data_set() {
                    if c.command_field != message::C_STORE_RQ {
                        return Some(Step::Protocol(format!("{c} with a data set")));
                    }
                    self.pending = Some((pdv.presentation_context_id, c));
                    None
                } else {
                    Some(Step::Command(c))
                }
            }
            PDataValueType::Data => {
                let Some((pc, _)) = &self.pending else {
                    return Some(Step::Protocol("data without a command".into()));
                };
                if *pc != pdv.presentation_context_id {
                    return Some(Step::Protocol(
                        "the data set arrived on another presentation context than its command"
                            .into(),
                    ));
                }
                if self.overflow.is_none() {
                    let total = self.data.len() + pdv.data.len();
                    if total as u64 > self.max_data {
                        self.overflow = Some(format!(
                            "the data set is larger than {} bytes (--max-slice-pixels)",
                            self.max_data
                        ));
                    } else if self.reservation.grow_to(total).is_err() {
                        self.overflow = Some(
                            "the server holds too many data sets at once (--max-inflight-bytes): \
                             retry later"
                                .into(),
                        );
                    } else {
                        self.data.extend_from_slice(&pdv.data);
                    }
                    if self.overflow.is_some() {
                        self.data = Vec::new();
                        self.reservation.release();
                    }
                }
                if !pdv.is_last {
                    return None;
                }
                let (pc, command) = self.pending.take()?;
                // The reservation is held until the instance is answered.
                let data = std::mem::take(&mut self.data);
                Some(Step::Store {
                    pc,
                    command,
                    data,
                    overflow: self.overflow.take(),
                })
            }
        }
    }
}
