//! DIMSE command sets (PS3.7 section 9 and annex E): the C-ECHO and C-STORE requests
//! and responses, encoded as the standard requires (implicit VR little endian, group
//! 0000 with its Command Group Length first), and decoded with bounds on every length.

use std::fmt;

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage (multi-frame: accepted on the association, then refused
/// per instance with a clear status).
pub const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";

/// Command Field values (PS3.7 E.1).
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;

/// Largest command set accepted (they are a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// Status values used by ldct (PS3.4 annex B.2.3 for C-STORE, PS3.7 C for the general
/// ones).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP Class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP Class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;

    /// Whether a C-STORE response status means the peer stored the instance (success,
    /// or a warning: 0001, Bxxx).
    pub fn stored(s: u16) -> bool {
        s == SUCCESS || s == 0x0001 || (s & 0xF000) == 0xB000
    }

    /// Whether a failure status is about resources (worth retrying later): A7xx, and
    /// the general 0xA7xx / 0x0213 (resource limitation) / 0x0210 (duplicate invocation).
    pub fn transient(s: u16) -> bool {
        (s & 0xFF00) == 0xA700 || s == 0x0213 || s == 0x0210
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the command set is truncated")]
    Truncated,
    #[error("the command set is {0} bytes, more than {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    #[error("the command set has an element of group {0:04X}, not 0000")]
    WrongGroup(u16),
    #[error("the command set lacks {0}")]
    Missing(&'static str),
    #[error("{0} has a value of {1} bytes where {2} are expected")]
    BadLength(&'static str, usize, usize),
}

/// Tags of group 0000 that ldct reads or writes (element numbers).
mod tag {
    pub const GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
}

/// A decoded command set: the elements ldct uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub message_id_responded_to: Option<u16>,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub data_set_type: u16,
    pub status: Option<u16>,
    pub error_comment: Option<String>,
}

impl Command {
    /// Whether a data set follows the command.
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.command_field {
            C_STORE_RQ => "C-STORE-RQ",
            C_STORE_RSP => "C-STORE-RSP",
            C_ECHO_RQ => "C-ECHO-RQ",
            C_ECHO_RSP => "C-ECHO-RSP",
            _ => return write!(f, "DIMSE command 0x{:04X}", self.command_field),
        };
        f.write_str(name)
    }
}

fn uid_value(s: &str) -> Vec<u8> {
    let mut v = s.trim().as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn text_value(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

/// Writes a command set: the elements in tag order, preceded by the group length.
fn encode(mut elements: Vec<(u16, Vec<u8>)>) -> Vec<u8> {
    elements.sort_by_key(|(t, _)| *t);
    let body_len: usize = elements.iter().map(|(_, v)| 8 + v.len()).sum();
    let mut out = Vec::with_capacity(12 + body_len);
    let mut put = |element: u16, value: &[u8]| {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    };
    put(tag::GROUP_LENGTH, &(body_len as u32).to_le_bytes());
    for (t, v) in &elements {
        put(*t, v);
    }
    out
}

fn us(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// C-ECHO-RSP to the request with `message_id`.
pub fn echo_response(message_id: u16, status: u16) -> Vec<u8> {
    encode(vec![
        (tag::AFFECTED_SOP_CLASS_UID, uid_value(VERIFICATION)),
        (tag::COMMAND_FIELD, us(C_ECHO_RSP)),
        (tag::MESSAGE_ID_BEING_RESPONDED_TO, us(message_id)),
        (tag::COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
        (tag::STATUS, us(status)),
    ])
}

/// C-STORE-RQ for an instance (medium priority; a data set follows).
pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    encode(vec![
        (tag::AFFECTED_SOP_CLASS_UID, uid_value(sop_class_uid)),
        (tag::COMMAND_FIELD, us(C_STORE_RQ)),
        (tag::MESSAGE_ID, us(message_id)),
        (tag::PRIORITY, us(0)),
        (tag::COMMAND_DATA_SET_TYPE, us(0x0000)),
        (tag::AFFECTED_SOP_INSTANCE_UID, uid_value(sop_instance_uid)),
    ])
}

/// C-STORE-RSP: `comment` (an Error Comment, at most 64 characters) only on failure.
pub fn store_response(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    comment: Option<&str>,
) -> Vec<u8> {
    response(
        C_STORE_RQ,
        message_id,
        sop_class_uid,
        sop_instance_uid,
        status,
        comment,
    )
}

/// The response to a request with Command Field `request` (its field with bit 15 set).
pub fn response(
    request: u16,
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    comment: Option<&str>,
) -> Vec<u8> {
    let mut elements = vec![
        (tag::AFFECTED_SOP_CLASS_UID, uid_value(sop_class_uid)),
        (tag::COMMAND_FIELD, us(request | 0x8000)),
        (tag::MESSAGE_ID_BEING_RESPONDED_TO, us(message_id)),
        (tag::COMMAND_DATA_SET_TYPE, us(NO_DATA_SET)),
        (tag::STATUS, us(status)),
        (tag::AFFECTED_SOP_INSTANCE_UID, uid_value(sop_instance_uid)),
    ];
    if let Some(c) = comment.filter(|_| status != status::SUCCESS) {
        // LO: at most 64 characters, no backslash or control characters.
        let clean: String = c
            .chars()
            .map(|ch| {
                if ch == '\\' || ch.is_control() {
                    ' '
                } else {
                    ch
                }
            })
            .filter(char::is_ascii)
            .take(64)
            .collect();
        elements.push((tag::ERROR_COMMENT, text_value(clean.trim_end())));
    }
    encode(elements)
}

fn string_of(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_owned()
}

fn u16_of(name: &'static str, v: &[u8]) -> Result<u16, CommandError> {
    match v {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CommandError::BadLength(name, v.len(), 2)),
    }
}

/// Decodes a command set (implicit VR little endian, group 0000 only).
pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    let mut c = Command::default();
    let mut field = None;
    let mut data_set_type = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(CommandError::Truncated);
        }
        let group = u16::from_le_bytes([rest[0], rest[1]]);
        let element = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if group != 0x0000 {
            return Err(CommandError::WrongGroup(group));
        }
        let value = rest
            .get(8..8usize.saturating_add(len))
            .ok_or(CommandError::Truncated)?;
        match element {
            tag::AFFECTED_SOP_CLASS_UID => c.affected_sop_class_uid = Some(string_of(value)),
            tag::COMMAND_FIELD => field = Some(u16_of("Command Field", value)?),
            tag::MESSAGE_ID => c.message_id = Some(u16_of("Message ID", value)?),
            tag::MESSAGE_ID_BEING_RESPONDED_TO => {
                c.message_id_responded_to = Some(u16_of("Message ID Being Responded To", value)?)
            }
            tag::COMMAND_DATA_SET_TYPE => {
                data_set_type = Some(u16_of("Command Data Set Type", value)?)
            }
            tag::STATUS => c.status = Some(u16_of("Status", value)?),
            tag::ERROR_COMMENT => c.error_comment = Some(string_of(value)),
            tag::AFFECTED_SOP_INSTANCE_UID => c.affected_sop_instance_uid = Some(string_of(value)),
            tag::GROUP_LENGTH | tag::PRIORITY | tag::MOVE_ORIGINATOR_AE_TITLE => {}
            _ => {}
        }
        rest = &rest[8 + len..];
    }
    c.command_field = field.ok_or(CommandError::Missing("Command Field (0000,0100)"))?;
    c.data_set_type =
        data_set_type.ok_or(CommandError::Missing("Command Data Set Type (0000,0800)"))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_request_round_trips_and_has_an_exact_group_length() {
        let b = store_request(7, CT_IMAGE_STORAGE, "1.2.3.45");
        // (0000,0000) UL: 4-byte value = the bytes after it.
        assert_eq!(&b[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        assert_eq!(len, b.len() - 12);
        let c = decode(&b).unwrap();
        assert_eq!(c.command_field, C_STORE_RQ);
        assert_eq!(c.message_id, Some(7));
        assert_eq!(c.affected_sop_class_uid.as_deref(), Some(CT_IMAGE_STORAGE));
        // "1.2.3.45" is even: no padding; an odd UID is padded with a NUL and read back.
        assert_eq!(c.affected_sop_instance_uid.as_deref(), Some("1.2.3.45"));
        assert!(c.has_data_set());
        let odd = decode(&store_request(1, CT_IMAGE_STORAGE, "1.2.3")).unwrap();
        assert_eq!(odd.affected_sop_instance_uid.as_deref(), Some("1.2.3"));
        // Elements in ascending tag order.
        let mut tags = Vec::new();
        let mut r = &b[..];
        while !r.is_empty() {
            tags.push(u16::from_le_bytes([r[2], r[3]]));
            let l = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize;
            r = &r[8 + l..];
        }
        let mut sorted = tags.clone();
        sorted.sort();
        assert_eq!(tags, sorted);
    }

    #[test]
    fn responses_carry_the_status_and_a_clean_comment_only_on_failure() {
        let ok = decode(&store_response(
            3,
            CT_IMAGE_STORAGE,
            "1.2",
            status::SUCCESS,
            Some("x"),
        ))
        .unwrap();
        assert_eq!(ok.status, Some(0));
        assert_eq!(ok.message_id_responded_to, Some(3));
        assert_eq!(ok.error_comment, None);
        assert!(!ok.has_data_set());
        let long = "a\\b\nc".repeat(40);
        let bad = decode(&store_response(
            3,
            CT_IMAGE_STORAGE,
            "1.2",
            status::OUT_OF_RESOURCES,
            Some(&long),
        ))
        .unwrap();
        let comment = bad.error_comment.unwrap();
        assert!(comment.len() <= 64 && !comment.contains('\\') && !comment.contains('\n'));
        // Any other request is answered with its own field, bit 15 set (C-FIND: 0x8020).
        let find = decode(&response(
            0x0020,
            5,
            "1.2",
            "",
            status::UNRECOGNIZED_OPERATION,
            None,
        ))
        .unwrap();
        assert_eq!((find.command_field, find.status), (0x8020, Some(0x0211)));
        let echo = decode(&echo_response(9, status::SUCCESS)).unwrap();
        assert_eq!(
            (echo.command_field, echo.message_id_responded_to),
            (C_ECHO_RSP, Some(9))
        );
    }

    #[test]
    fn hostile_command_sets_are_errors_not_panics() {
        let b = store_request(1, CT_IMAGE_STORAGE, "1.2.3");
        for cut in 0..b.len() {
            let _ = decode(&b[..cut]);
        }
        assert_eq!(decode(&b[..b.len() - 1]), Err(CommandError::Truncated));
        let mut huge = b.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(CommandError::Truncated));
        let mut other = b.clone();
        other[0] = 8;
        assert_eq!(decode(&other), Err(CommandError::WrongGroup(8)));
        assert!(matches!(
            decode(&vec![0; MAX_COMMAND_BYTES + 1]),
            Err(CommandError::TooLarge(_))
        ));
        assert_eq!(
            decode(&[]),
            Err(CommandError::Missing("Command Field (0000,0100)"))
        );
    }

    #[test]
    fn statuses_sort_into_stored_retry_and_refused() {
        assert!(status::stored(0x0000) && status::stored(0xB000) && status::stored(0xB007));
        assert!(!status::stored(0xA700) && !status::stored(0xC000));
        assert!(status::transient(0xA700) && status::transient(0xA7FF));
        assert!(!status::transient(0xA900) && !status::transient(0x0122));
    }
}
