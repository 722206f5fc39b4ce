//! `multipart/related` bodies (RFC 2387, with the RFC 2046 multipart syntax): the parser
//! for STOW-RS requests and WADO-RS responses, the writer for STOW-RS requests to the
//! PACS, and media type parameters (`type`, `boundary`, `transfer-syntax`).
//!
//! The parser works on the whole body in memory (the caller bounds its size) and returns
//! the parts as zero-copy slices of it. It is strict where a mistake would lose data (the
//! closing delimiter must be present, so a truncated body is an error, not fewer parts)
//! and lenient where senders differ harmlessly (preamble, epilogue, transport padding
//! after a delimiter, folded headers, header name case).

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::web::Bytes;
use memchr::memmem;

/// Most header bytes one part may have.
pub const MAX_PART_HEADER_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Content-Type {0:?} is not {1}")]
    NotMultipart(String, &'static str),
    #[error("the multipart Content-Type has no boundary parameter")]
    NoBoundary,
    #[error("invalid boundary {0:?}: 1 to {MAX_BOUNDARY} characters, not ending in a space")]
    BadBoundary(String),
    #[error("the body does not start with the boundary delimiter")]
    NoDelimiter,
    #[error("part {index}: {message}")]
    Part { index: usize, message: String },
    #[error("the closing boundary delimiter is missing (truncated body?)")]
    Unterminated,
    #[error("the body has no parts")]
    Empty,
    #[error("more than {0} parts")]
    TooManyParts(usize),
}

/// A media type (`type/subtype`, lower case) and its parameters (names lower case,
/// values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub essence: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses `type/subtype; name=value; name="quoted \" value"`. `None` when there is
    /// no `type/subtype`.
    pub fn parse(s: &str) -> Option<MediaType> {
        let (essence, rest) = match s.find(';') {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        let essence = essence.trim().to_ascii_lowercase();
        let (t, sub) = essence.split_once('/')?;
        if t.is_empty() || sub.is_empty() || essence.contains(char::is_whitespace) {
            return None;
        }
        Some(MediaType {
            essence,
            params: parse_params(rest),
        })
    }

    /// A parameter's value by (case-insensitive) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.trim().is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                // Anything up to the next ';' after the closing quote is ignored.
                while chars.peek().is_some_and(|c| *c != ';') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
        }
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() {
            out.push((name, value));
        }
        if chars.peek().is_none() {
            return out;
        }
    }
}

/// Checks that a Content-Type is `multipart/related` and returns it with its boundary.
pub fn related(content_type: &str) -> Result<(MediaType, String), MultipartError> {
    multipart(content_type, "multipart/related")
}

/// Checks that a Content-Type is the multipart type `essence` (`multipart/related`,
/// `multipart/form-data`) and returns it with its boundary.
pub fn multipart(
    content_type: &str,
    essence: &'static str,
) -> Result<(MediaType, String), MultipartError> {
    let mt = MediaType::parse(content_type)
        .filter(|m| m.essence == essence)
        .ok_or_else(|| MultipartError::NotMultipart(content_type.to_owned(), essence))?;
    let boundary = mt
        .param("boundary")
        .ok_or(MultipartError::NoBoundary)?
        .to_owned();
    check_boundary(&boundary)?;
    Ok((mt, boundary))
}

/// Longest boundary accepted. RFC 2046 says 70, but Orthanc's STOW-RS client sends 73
/// characters: be lenient, only absurd lengths are refused.
pub const MAX_BOUNDARY: usize = 200;

fn check_boundary(b: &str) -> Result<(), MultipartError> {
    if b.is_empty() || b.len() > MAX_BOUNDARY || b.ends_with(' ') || !b.is_ascii() {
        return Err(MultipartError::BadBoundary(b.to_owned()));
    }
    Ok(())
}

/// One body part: its headers (in order, names as sent) and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    /// A header's value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The part's media type; `None` when it has no (parseable) Content-Type.
    pub fn media_type(&self) -> Option<MediaType> {
        self.header("content-type").and_then(MediaType::parse)
    }

    /// The field name of a `multipart/form-data` part (`Content-Disposition: form-data;
    /// name="..."`); `None` without one.
    pub fn form_name(&self) -> Option<String> {
        let (kind, params) = self.header("content-disposition")?.split_once(';')?;
        if !kind.trim().eq_ignore_ascii_case("form-data") {
            return None;
        }
        parse_params(params)
            .into_iter()
            .find(|(n, _)| n == "name")
            .map(|(_, v)| v)
    }
}

/// Splits a multipart body on `boundary` into at most `max_parts` parts.
pub fn parse(body: &Bytes, boundary: &str, max_parts: usize) -> Result<Vec<Part>, MultipartError> {
    check_boundary(boundary)?;
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let first = memmem::Finder::new(delim.as_bytes());
    let later = memmem::Finder::new(next_delim.as_bytes());
    let data: &[u8] = body;

    // The first delimiter starts the body or a line (the preamble is ignored).
    let mut from = 0;
    let mut pos = loop {
        let at = first
            .find(&data[from..])
            .map(|i| from + i)
            .ok_or(MultipartError::NoDelimiter)?;
        if at == 0 || data[..at].ends_with(b"\n") {
            break at + delim.len();
        }
        from = at + 1;
    };

    let mut parts = Vec::new();
    loop {
        // After a delimiter: "--" closes the body; else optional padding, then CRLF.
        if data[pos..].starts_with(b"--") {
            break;
        }
        while matches!(data.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        if data[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else if data[pos..].starts_with(b"\n") {
            pos += 1;
        } else if pos >= data.len() {
            return Err(MultipartError::Unterminated);
        } else {
            return Err(MultipartError::Part {
                index: parts.len(),
                message: "the boundary delimiter is not followed by a line break".into(),
            });
        }
        if parts.len() == max_parts {
            return Err(MultipartError::TooManyParts(max_parts));
        }
        // The part runs up to the next CRLF + delimiter that is followed by "--",
        // padding or a line break (anything else is content that merely contains it).
        let mut search = pos;
        let end = loop {
            let at = later
                .find(&data[search..])
                .map(|i| search + i)
                .ok_or(MultipartError::Unterminated)?;
            let after = &data[at + next_delim.len()..];
            if after.is_empty()
                || after.starts_with(b"--")
                || matches!(after[0], b'\r' | b'\n' | b' ' | b'\t')
            {
                break at;
            }
            search = at + 1;
        };
        let index = parts.len();
        parts.push(split_part(body, pos, end, index)?);
        pos = end + next_delim.len();
    }
    if parts.is_empty() {
        return Err(MultipartError::Empty);
    }
    Ok(parts)
}

fn split_part(
    body: &Bytes,
    start: usize,
    end: usize,
    index: usize,
) -> Result<Part, MultipartError> {
    let raw = &body[start..end];
    let err = |message: String| MultipartError::Part { index, message };
    let (head, content_start) = if raw.starts_with(b"\r\n") {
        (&raw[..0], 2)
    } else if raw.starts_with(b"\n") {
        (&raw[..0], 1)
    } else {
        let limit = raw.len().min(MAX_PART_HEADER_BYTES + 4);
        match memmem::find(&raw[..limit], b"\r\n\r\n") {
            Some(i) => (&raw[..i], i + 4),
            None => match memmem::find(&raw[..limit], b"\n\n") {
                Some(i) => (&raw[..i], i + 2),
                None if limit < raw.len() => {
                    return Err(err(format!(
                        "its headers are longer than {MAX_PART_HEADER_BYTES} bytes"
                    )))
                }
                None => return Err(err("no blank line after its headers".into())),
            },
        }
    };
    let head = std::str::from_utf8(head).map_err(|_| err("its headers are not text".into()))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A folded header continues the previous one.
            match headers.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => return Err(err(format!("header line {line:?} continues nothing"))),
            }
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| err(format!("header line {line:?} has no ':'")))?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(err(format!("invalid header name {name:?}")));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Part {
        headers,
        body: body.slice(start + content_start..end),
    })
}

static BOUNDARY_SEQ: AtomicU64 = AtomicU64::new(0);

/// A boundary that occurs in none of `parts`.
pub fn boundary_for(parts: &[Bytes]) -> String {
    use sha2::{Digest, Sha256};
    loop {
        let mut h = Sha256::new();
        h.update(BOUNDARY_SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.update(t.as_nanos().to_le_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let boundary = format!("ldct-{hex}");
        let finder = memmem::Finder::new(boundary.as_bytes());
        if parts.iter().all(|p| finder.find(p).is_none()) {
            return boundary;
        }
    }
}

/// The Content-Type of a `multipart/related` body of `part_type` parts.
pub fn content_type(part_type: &str, boundary: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// A `multipart/related` body: each part with a Content-Type header, CRLF line breaks,
/// the closing delimiter. `boundary` must not occur in any part ([`boundary_for`]).
pub fn write(parts: &[Bytes], part_type: &str, boundary: &str) -> Bytes {
    let size: usize = parts
        .iter()
        .map(|p| p.len() + boundary.len() + part_type.len() + 24)
        .sum::<usize>()
        + boundary.len()
        + 8;
    let mut out = Vec::with_capacity(size);
    for p in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(part_type.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_parameters() {
        let m = MediaType::parse(
            "Multipart/Related; type=\"application/dicom\"; boundary=abc ;transfer-syntax=*",
        )
        .unwrap();
        assert_eq!(m.essence, "multipart/related");
        assert_eq!(m.param("TYPE"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("abc"));
        assert_eq!(m.param("transfer-syntax"), Some("*"));
        let m = MediaType::parse("multipart/related;type=application/dicom;boundary=\"a \\\"b\"")
            .unwrap();
        assert_eq!(m.param("type"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("a \"b"));
        assert!(MediaType::parse("dicom").is_none());
        assert!(MediaType::parse("").is_none());
    }

    #[test]
    fn form_data_field_names() {
        let part = |cd: &str| Part {
            headers: vec![("Content-Disposition".into(), cd.into())],
            body: Bytes::new(),
        };
        assert_eq!(
            part("form-data; name=\"input\"; filename=\"a.dcm\"").form_name(),
            Some("input".into())
        );
        assert_eq!(
            part("Form-Data; name=reference").form_name(),
            Some("reference".into())
        );
        assert_eq!(part("attachment; name=\"input\"").form_name(), None);
        assert_eq!(part("form-data").form_name(), None);
        assert!(multipart("multipart/form-data; boundary=x", "multipart/form-data").is_ok());
        assert!(multipart("multipart/related; boundary=x", "multipart/form-data").is_err());
    }

    #[test]
    fn related_requires_a_boundary() {
        assert!(matches!(
            related("multipart/form-data; boundary=x"),
            Err(MultipartError::NotMultipart(_, _))
        ));
        assert_eq!(
            related("multipart/related; type=\"application/dicom\""),
            Err(MultipartError::NoBoundary)
        );
        let long = format!("multipart/related; boundary={}", "x".repeat(201));
        // Orthanc's 73 characters are fine.
        assert!(related(&format!("multipart/related; boundary={}", "x".repeat(73))).is_ok());
        assert!(matches!(
            related(&long),
            Err(MultipartError::BadBoundary(_))
        ));
        assert_eq!(related("multipart/related; boundary=b").unwrap().1, "b");
    }
}
