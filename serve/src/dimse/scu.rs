//! The C-STORE SCU: pushes spooled derived instances to a DICOM node
//! (`--pacs-dimse HOST:PORT:AET`), one association per batch.
//!
//! Per instance, the peer's C-STORE status decides: success or warning (0000, 0001,
//! Bxxx) is stored; out of resources (A7xx) is tried again later; any other failure is
//! a refusal of the instance (it moves to the spool's `failed/` folder, as a STOW-RS
//! refusal does). A refused or lost association, a timeout or an abort leaves every
//! instance not yet confirmed in the spool for the next attempt: nothing is lost, and a
//! re-sent instance has the same UIDs, so the peer stores it once.

use std::time::Duration;

use actix_web::web::Bytes;
use dicom_object::meta::FileMetaTable;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::Pdu;

use super::access::DimsePeer;
use super::message::{self, status};
use crate::dicomweb::client::InstanceOutcome;

/// Why a whole push attempt failed (every instance of it stays queued).
#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("cannot open an association with {peer}: {message}")]
    Associate { peer: String, message: String },
    #[error("the association with {peer} failed: {message}")]
    Lost { peer: String, message: String },
    #[error(
        "{peer} accepted no presentation context for {sop_class} in explicit VR little endian"
    )]
    NoContext { peer: String, sop_class: String },
}

impl ScuError {
    /// One line without the peer's details (for warnings).
    pub fn summary(&self) -> String {
        match self {
            ScuError::Associate { .. } => "cannot open an association with the DICOM node".into(),
            ScuError::Lost { .. } => "the association with the DICOM node failed".into(),
            ScuError::NoContext { .. } => {
                "the DICOM node accepts no CT Image Storage in explicit VR little endian".into()
            }
        }
    }
}

/// The C-STORE client of `--pacs-dimse`.
#[derive(Debug, Clone)]
pub struct StoreScu {
    pub peer: DimsePeer,
    /// Our AE title (`--dimse-ae-title`).
    pub calling_ae_title: String,
    pub timeout: Duration,
    pub max_pdu: u32,
}

/// A spooled file's data set, without its file meta group, and what the C-STORE needs.
struct Outgoing<'a> {
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: String,
    data_set: &'a [u8],
}

fn split(body: &[u8]) -> Result<Outgoing<'_>, String> {
    let after_preamble = body
        .get(128..)
        .ok_or("the spooled file is shorter than a DICOM preamble")?;
    let mut cursor = std::io::Cursor::new(after_preamble);
    let meta = FileMetaTable::from_reader(&mut cursor)
        .map_err(|e| format!("the spooled file has no readable file meta group: {e}"))?;
    let start = 128 + cursor.position() as usize;
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    Ok(Outgoing {
        sop_class_uid: trim(meta.media_storage_sop_class_uid()),
        sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
        transfer_syntax: trim(meta.transfer_syntax()),
        data_set: &body[start..],
    })
}

impl StoreScu {
    /// Sends `bodies` (Part 10 files from the spool) in one association; one outcome per
    /// body, in order. `Err` when the association could not be used at all.
    pub async fn store(&self, bodies: &[Bytes]) -> Result<Vec<InstanceOutcome>, ScuError> {
        let mut outcomes: Vec<Option<InstanceOutcome>> = vec![None; bodies.len()];
        let mut outgoing = Vec::with_capacity(bodies.len());
        for (i, b) in bodies.iter().enumerate() {
            match split(b) {
                Ok(o) => outgoing.push((i, o)),
                Err(e) => outcomes[i] = Some(InstanceOutcome::Rejected(e)),
            }
        }
        if !outgoing.is_empty() {
            self.send_all(&outgoing, &mut outcomes).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| InstanceOutcome::Retry("not sent".into())))
            .collect())
    }

    async fn send_all(
        &self,
        outgoing: &[(usize, Outgoing<'_>)],
        outcomes: &mut [Option<InstanceOutcome>],
    ) -> Result<(), ScuError> {
        let peer = self.peer.to_string();
        let mut contexts: Vec<(String, String)> = Vec::new();
        for (_, o) in outgoing {
            let key = (o.sop_class_uid.clone(), o.transfer_syntax.clone());
            if !contexts.contains(&key) {
                contexts.push(key);
            }
        }
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(self.calling_ae_title.as_str())
            .called_ae_title(self.peer.ae_title.as_str())
            .max_pdu_length(self.max_pdu)
            .strict(true)
            .read_timeout(self.timeout)
            .connection_timeout(self.timeout);
        for (class, ts) in &contexts {
            options = options.with_presentation_context(class.as_str(), vec![ts.as_str()]);
        }
        let mut assoc = options
            .establish_async(self.peer.address())
            .await
            .map_err(|e| ScuError::Associate {
                peer: peer.clone(),
                message: e.to_string(),
            })?;
        let mut message_id: u16 = 0;
        let mut result = Ok(());
        for (i, o) in outgoing {
            let Some(pc) = assoc
                .presentation_contexts()
                .iter()
                .find(|pc| {
                    pc.reason == PresentationContextResultReason::Acceptance
                        && pc.abstract_syntax.trim_end_matches('\0') == o.sop_class_uid
                        && pc.transfer_syntax.trim_end_matches('\0') == o.transfer_syntax
                })
                .map(|pc| pc.id)
            else {
                result = Err(ScuError::NoContext {
                    peer: peer.clone(),
                    sop_class: o.sop_class_uid.clone(),
                });
                break;
            };
            message_id = message_id.wrapping_add(1).max(1);
            match self.store_one(&mut assoc, pc, message_id, o).await {
                Ok(outcome) => outcomes[*i] = Some(outcome),
                Err(message) => {
                    result = Err(ScuError::Lost {
                        peer: peer.clone(),
                        message,
                    });
                    break;
                }
            }
        }
        if result.is_ok() {
            if let Err(e) = assoc.release().await {
                tracing::debug!(error = %e, "A-RELEASE with the DICOM node failed (instances already confirmed)");
            }
        } else {
            let _ = assoc.abort().await;
        }
        result
    }

    async fn store_one(
        &self,
        assoc: &mut AsyncClientAssociation<tokio::net::TcpStream>,
        pc: u8,
        message_id: u16,
        o: &Outgoing<'_>,
    ) -> Result<InstanceOutcome, String> {
        let command = message::store_request(message_id, &o.sop_class_uid, &o.sop_instance_uid);
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: command,
                }],
            })
            .await
            .map_err(|e| format!("sending the C-STORE request: {e}"))?;
        // The data set in P-DATA PDUs no larger than the peer accepts (dicom-ul's P-DATA
        // writer needs a multi-threaded runtime when dropped; actix's is not).
        let peer_max = match assoc.acceptor_max_pdu_length() {
            0 => 1 << 20,
            n => n as usize,
        };
        let chunk = peer_max.saturating_sub(6).max(1024);
        let mut parts = o.data_set.chunks(chunk).peekable();
        if parts.peek().is_none() {
            return Err("the data set is empty".into());
        }
        while let Some(part) = parts.next() {
            assoc
                .send(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: pc,
                        value_type: PDataValueType::Data,
                        is_last: parts.peek().is_none(),
                        data: part.to_vec(),
                    }],
                })
                .await
                .map_err(|e| format!("sending the data set: {e}"))?;
        }
        let mut command = Vec::new();
        loop {
            let pdu = assoc
                .receive()
                .await
                .map_err(|e| format!("waiting for the C-STORE response: {e}"))?;
            match pdu {
                Pdu::PData { data } => {
                    for v in data {
                        if v.value_type != PDataValueType::Command {
                            return Err("the peer sent data instead of a C-STORE response".into());
                        }
                        if command.len() + v.data.len() > message::MAX_COMMAND_BYTES {
                            return Err("the C-STORE response is too large".into());
                        }
                        command.extend_from_slice(&v.data);
                        if v.is_last {
                            return response_outcome(&command, message_id);
                        }
                    }
                }
                Pdu::AbortRQ { source } => return Err(format!("the peer aborted ({source:?})")),
                other => {
                    return Err(format!(
                        "unexpected {} while waiting for a C-STORE response",
                        other.short_description()
                    ))
                }
            }
        }
    }
}

fn response_outcome(command: &[u8], message_id: u16) -> Result<InstanceOutcome, String> {
    let rsp = message::decode(command).map_err(|e| format!("the C-STORE response: {e}"))?;
    if rsp.command_field != message::C_STORE_RSP {
        return Err(format!("{rsp} where a C-STORE-RSP was expected"));
    }
    if rsp.message_id_responded_to != Some(message_id) {
        return Err(format!(
            "the C-STORE response answers message {:?}, not {message_id}",
            rsp.message_id_responded_to
        ));
    }
    let code = rsp.status.ok_or("the C-STORE response has no Status")?;
    let why = || {
        format!(
            "C-STORE status 0x{code:04X}{}",
            rsp.error_comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )
    };
    Ok(if status::stored(code) {
        InstanceOutcome::Stored
    } else if status::transient(code) {
        InstanceOutcome::Retry(why())
    } else {
        InstanceOutcome::Rejected(why())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_map_to_outcomes() {
        let r = |s| {
            response_outcome(
                &message::store_response(4, message::CT_IMAGE_STORAGE, "1.2", s, Some("why")),
                4,
            )
        };
        assert_eq!(r(0x0000), Ok(InstanceOutcome::Stored));
        assert_eq!(r(0xB007), Ok(InstanceOutcome::Stored));
        assert!(matches!(r(0xA701), Ok(InstanceOutcome::Retry(m)) if m.contains("0xA701: why")));
        assert!(matches!(r(0xC000), Ok(InstanceOutcome::Rejected(_))));
        // Another message's answer or a request is a protocol failure: retried whole.
        let other = message::store_response(5, message::CT_IMAGE_STORAGE, "1.2", 0, None);
        assert!(response_outcome(&other, 4).is_err());
        let rq = message::store_request(4, message::CT_IMAGE_STORAGE, "1.2");
        assert!(response_outcome(&rq, 4).is_err());
    }

    #[test]
    fn a_spooled_file_splits_into_meta_and_data_set() {
        let src = std::fs::read(ldct_testkit::dicom_test_file("CT_small.dcm")).unwrap();
        let o = split(&src).unwrap();
        assert_eq!(o.sop_class_uid, message::CT_IMAGE_STORAGE);
        assert!(!o.sop_instance_uid.is_empty());
        // The data set starts with group 0008, right after the meta group.
        assert_eq!(&o.data_set[..2], &[0x08, 0x00]);
        assert!(split(b"short").is_err());
        assert!(split(&[0u8; 300]).is_err());
    }
}
