//! Raw volumes and InVesalius `.inv3` projects.
//!
//! - Raw: a headerless (or fixed-size-header) block of `slices x rows x cols` samples,
//!   C order (column fastest), int16 / uint16 / float32, either byte order. The values
//!   are taken as HU as they are. The file size must match exactly.
//! - `.inv3` (InVesalius 3 project): a gzipped tar holding `<dir>/main.plist` (Apple XML
//!   plist) and the volume `<dir>/matrix.dat`. `main.plist` has a `matrix` dict with
//!   `dtype` (e.g. `int16`), `filename` and `shape` `[slices, rows, cols]`, and a
//!   top-level `spacing` `[x, y, z]` in mm (x along columns). `matrix.dat` is a raw
//!   little-endian array (numpy memmap) of HU in that shape. The Debian package
//!   `invesalius-examples` ships a real head CT, `Cranium.inv3` (108 x 256 x 256 int16,
//!   spacing 0.957 x 0.957 x 1.5 mm); [`default_inv3_path`] finds it.

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::Array3;

use crate::error::{ImagingError, Result};
use crate::image::CtVolume;

/// Sample type of a raw volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RawDtype {
    /// Signed 16-bit (the usual CT storage).
    #[default]
    I16,
    U16,
    F32,
}

impl RawDtype {
    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            RawDtype::I16 | RawDtype::U16 => 2,
            RawDtype::F32 => 4,
        }
    }

    /// numpy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            RawDtype::I16 => "int16",
            RawDtype::U16 => "uint16",
            RawDtype::F32 => "float32",
        }
    }

    /// From numpy's name (`int16`, `uint16`, `float32`; also `i2`, `u2`, `f4`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().trim_start_matches(['<', '=', '|']) {
            "int16" | "i2" | "short" => Ok(RawDtype::I16),
            "uint16" | "u2" | "ushort" => Ok(RawDtype::U16),
            "float32" | "f4" | "float" => Ok(RawDtype::F32),
            other => Err(ImagingError::Raw(format!(
                "unsupported sample type {other:?} (expected int16, uint16 or float32)"
            ))),
        }
    }
}

/// Byte order of a raw volume's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endian {
    #[default]
    Little,
    Big,
}

fn expected_bytes(shape: [usize; 3], dtype: RawDtype, header_bytes: usize) -> Result<usize> {
    if shape.contains(&0) {
        return Err(ImagingError::Raw(format!(
            "shape {shape:?} has a zero dimension"
        )));
    }
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header_bytes))
        .ok_or_else(|| ImagingError::Raw(format!("shape {shape:?} is too large")))
}

/// A raw volume from bytes: `header_bytes` skipped, then exactly
/// `slices * rows * cols * dtype.size()` bytes of samples in C order. `shape` is
/// `[slices, rows, cols]`. Too few or too many bytes is an error naming both sizes.
pub fn parse_raw_volume(
    bytes: &[u8],
    shape: [usize; 3],
    dtype: RawDtype,
    endian: Endian,
    header_bytes: usize,
) -> Result<CtVolume> {
    let expected = expected_bytes(shape, dtype, header_bytes)?;
    if bytes.len() != expected {
        let relation = if bytes.len() < expected {
            "shorter"
        } else {
            "longer"
        };
        return Err(ImagingError::Raw(format!(
            "data is {relation} than expected: {} bytes, but shape {shape:?} of {} with a \
             {header_bytes}-byte header needs {expected}",
            bytes.len(),
            dtype.name()
        )));
    }
    let data = &bytes[header_bytes..];
    let le = endian == Endian::Little;
    let values: Vec<f32> = match dtype {
        RawDtype::I16 => data
            .chunks_exact(2)
            .map(|b| {
                let b = [b[0], b[1]];
                f32::from(if le {
                    i16::from_le_bytes(b)
                } else {
                    i16::from_be_bytes(b)
                })
            })
            .collect(),
        RawDtype::U16 => data
            .chunks_exact(2)
            .map(|b| {
                let b = [b[0], b[1]];
                f32::from(if le {
                    u16::from_le_bytes(b)
                } else {
                    u16::from_be_bytes(b)
                })
            })
            .collect(),
        RawDtype::F32 => data
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if le {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                }
            })
            .collect(),
    };
    let hu = Array3::from_shape_vec((shape[0], shape[1], shape[2]), values)
        .map_err(|e| ImagingError::Raw(e.to_string()))?;
    Ok(CtVolume {
        hu,
        pixel_spacing: None,
    })
}

/// Reads a raw volume file (see [`parse_raw_volume`]). The file size is checked before
/// reading.
pub fn read_raw_volume(
    path: &Path,
    shape: [usize; 3],
    dtype: RawDtype,
    endian: Endian,
    header_bytes: usize,
) -> Result<CtVolume> {
    let expected = expected_bytes(shape, dtype, header_bytes)?;
    let len = std::fs::metadata(path)
        .map_err(|e| ImagingError::io(path, e))?
        .len();
    if len != expected as u64 {
        let relation = if len < expected as u64 {
            "shorter"
        } else {
            "longer"
        };
        return Err(ImagingError::Raw(format!(
            "{} is {relation} than expected: {len} bytes, but shape {shape:?} of {} with a \
             {header_bytes}-byte header needs {expected}",
            path.display(),
            dtype.name()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    parse_raw_volume(&bytes, shape, dtype, endian, header_bytes)
}

/// Encodes a volume as raw samples (C order, no header). Values are rounded and clamped
/// to the integer types' ranges; NaN or infinity is an error.
pub fn encode_raw_volume(hu: &Array3<f32>, dtype: RawDtype, endian: Endian) -> Result<Vec<u8>> {
    let le = endian == Endian::Little;
    let mut out = Vec::with_capacity(hu.len() * dtype.size());
    for &v in hu.iter() {
        if !v.is_finite() {
            return Err(ImagingError::NonFinite);
        }
        match dtype {
            RawDtype::I16 => {
                let s = v.round().clamp(-32768.0, 32767.0) as i16;
                out.extend_from_slice(&if le { s.to_le_bytes() } else { s.to_be_bytes() });
            }
            RawDtype::U16 => {
                let s = v.round().clamp(0.0, 65535.0) as u16;
                out.extend_from_slice(&if le { s.to_le_bytes() } else { s.to_be_bytes() });
            }
            RawDtype::F32 => {
                out.extend_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
            }
        }
    }
    Ok(out)
}

/// Writes [`encode_raw_volume`] to `path`.
pub fn write_raw_volume(
    path: &Path,
    hu: &Array3<f32>,
    dtype: RawDtype,
    endian: Endian,
) -> Result<()> {
    let bytes = encode_raw_volume(hu, dtype, endian)?;
    std::fs::write(path, bytes).map_err(|e| ImagingError::io(path, e))
}

// ---------------------------------------------------------------------------------------
// InVesalius .inv3

/// Where Debian's `invesalius-examples` puts `Cranium.inv3` (the package's documentation
/// folder on current releases; DESIGN.md names the older samples folder).
pub const INV3_PATHS: [&str; 2] = [
    "/usr/share/doc/invesalius-examples/examples/Cranium.inv3",
    "/usr/share/invesalius/samples/Cranium.inv3",
];

/// Shape used when an `.inv3` has no readable `main.plist`: `Cranium.inv3`'s.
pub const INV3_FALLBACK_SHAPE: [usize; 3] = [108, 256, 256];

/// The first of [`INV3_PATHS`] that exists.
pub fn default_inv3_path() -> Option<PathBuf> {
    INV3_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// What `main.plist` says about the volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Inv3Meta {
    /// `[slices, rows, cols]`.
    pub shape: [usize; 3],
    pub dtype: RawDtype,
    /// Name of the volume file inside the archive (e.g. `matrix.dat`).
    pub filename: String,
    /// `[x (column), y (row), z (slice)]` spacing in mm, when given.
    pub spacing: Option<[f64; 3]>,
    /// Modality (e.g. `CT`), when given.
    pub modality: Option<String>,
}

/// Reads an InVesalius `.inv3` project's volume (see the module docs).
pub fn read_inv3(path: &Path) -> Result<CtVolume> {
    read_inv3_with_meta(path).map(|(v, _)| v)
}

/// [`read_inv3`] with the metadata from `main.plist`.
pub fn read_inv3_with_meta(path: &Path) -> Result<(CtVolume, Inv3Meta)> {
    let file = std::fs::File::open(path).map_err(|e| ImagingError::io(path, e))?;
    parse_inv3(std::io::BufReader::new(file))
        .map_err(|e| ImagingError::Raw(format!("{}: {e}", path.display())))
}

/// Reads an `.inv3` project (gzipped tar) from a reader.
pub fn parse_inv3(reader: impl Read) -> Result<(CtVolume, Inv3Meta)> {
    let gz = flate2::read::GzDecoder::new(reader);
    let mut archive = tar::Archive::new(gz);
    let tar_err =
        |e: std::io::Error| ImagingError::Raw(format!("not a readable .inv3 (gzipped tar): {e}"));
    let mut meta: Option<Inv3Meta> = None;
    let mut meta_error: Option<String> = None;
    // Volume candidates by file name, kept until main.plist says which one is the matrix.
    let mut volumes: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(tar_err)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wanted_volume = match &meta {
            Some(m) => name == m.filename,
            None => name == "matrix.dat",
        };
        if name == "main.plist" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(tar_err)?;
            match parse_main_plist(&text) {
                Ok(m) => {
                    volumes.retain(|(n, _)| *n == m.filename);
                    meta = Some(m);
                }
                Err(e) => meta_error = Some(e.to_string()),
            }
        } else if wanted_volume {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(tar_err)?;
            volumes.push((name, data));
        }
    }
    let meta = match meta {
        Some(m) => m,
        None => {
            if let Some(e) = &meta_error {
                tracing::warn!(
                    "ignoring unreadable main.plist ({e}); assuming {INV3_FALLBACK_SHAPE:?} int16"
                );
            }
            Inv3Meta {
                shape: INV3_FALLBACK_SHAPE,
                dtype: RawDtype::I16,
                filename: "matrix.dat".into(),
                spacing: None,
                modality: None,
            }
        }
    };
    let data = volumes
        .into_iter()
        .find(|(n, _)| *n == meta.filename)
        .map(|(_, d)| d)
        .ok_or_else(|| {
            ImagingError::Raw(format!(
                "the archive has no volume file {:?}",
                meta.filename
            ))
        })?;
    let mut volume = parse_raw_volume(&data, meta.shape, meta.dtype, Endian::Little, 0)
        .map_err(|e| ImagingError::Raw(format!("{}: {e}", meta.filename)))?;
    volume.pixel_spacing = meta.spacing.map(|s| [s[1], s[0]]);
    Ok((volume, meta))
}

/// Extracts the volume description from InVesalius' `main.plist`.
pub fn parse_main_plist(text: &str) -> Result<Inv3Meta> {
    let bad = |m: &str| ImagingError::Raw(format!("main.plist: {m}"));
    let root = plist::parse(text).map_err(|e| bad(&e))?;
    let matrix = root.get("matrix").ok_or_else(|| bad("no matrix entry"))?;
    let shape_vals = matrix
        .get("shape")
        .and_then(plist::Value::as_array)
        .ok_or_else(|| bad("matrix has no shape array"))?;
    let shape: Vec<usize> = shape_vals
        .iter()
        .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("matrix shape holds a non-integer"))?;
    let shape: [usize; 3] = shape
        .try_into()
        .map_err(|s: Vec<usize>| bad(&format!("matrix shape {s:?} is not 3-D")))?;
    let dtype = match matrix.get("dtype").and_then(plist::Value::as_str) {
        Some(name) => RawDtype::from_name(name)?,
        None => RawDtype::I16,
    };
    let filename = matrix
        .get("filename")
        .and_then(plist::Value::as_str)
        .unwrap_or("matrix.dat")
        .to_string();
    let spacing = match root.get("spacing").and_then(plist::Value::as_array) {
        Some(vals) => {
            let s: Vec<f64> = vals
                .iter()
                .map(plist::Value::as_f64)
                .collect::<Option<_>>()
                .ok_or_else(|| bad("spacing holds a non-number"))?;
            Some(
                s.try_into()
                    .map_err(|s: Vec<f64>| bad(&format!("spacing {s:?} is not 3 numbers")))?,
            )
        }
        None => None,
    };
    let modality = root
        .get("modality")
        .and_then(plist::Value::as_str)
        .map(str::to_string);
    Ok(Inv3Meta {
        shape,
        dtype,
        filename,
        spacing,
        modality,
    })
}

/// A minimal reader of Apple XML property lists: dicts, arrays, strings, integers, reals,
/// booleans; data and dates are kept as text.
mod plist {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Dict(Vec<(String, Value)>),
        Array(Vec<Value>),
        String(String),
        Integer(i64),
        Real(f64),
        Bool(bool),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Dict(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Array(v) => Some(v),
                _ => None,
            }
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }

        pub fn as_int(&self) -> Option<i64> {
            match self {
                Value::Integer(i) => Some(*i),
                _ => None,
            }
        }

        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Integer(i) => Some(*i as f64),
                Value::Real(r) => Some(*r),
                _ => None,
            }
        }
    }

    #[derive(Debug, PartialEq)]
    enum Token {
        Open(String),
        Close(String),
        Empty(String),
        Text(String),
    }

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    fn tokenize(text: &str) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("<!--") {
                let end = after.find("-->").ok_or("unterminated comment")?;
                rest = &after[end + 3..];
            } else if rest.starts_with("<?") || rest.starts_with("<!") {
                let end = rest.find('>').ok_or("unterminated declaration")?;
                rest = &rest[end + 1..];
            } else if let Some(after) = rest.strip_prefix('<') {
                let end = after.find('>').ok_or("unterminated tag")?;
                let tag = after[..end].trim();
                rest = &after[end + 1..];
                if let Some(name) = tag.strip_prefix('/') {
                    tokens.push(Token::Close(name.trim().to_string()));
                } else if let Some(name) = tag.strip_suffix('/') {
                    tokens.push(Token::Empty(first_word(name)));
                } else {
                    tokens.push(Token::Open(first_word(tag)));
                }
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                let t = &rest[..end];
                if !t.trim().is_empty() {
                    tokens.push(Token::Text(unescape(t)));
                }
                rest = &rest[end..];
            }
        }
        Ok(tokens)
    }

    fn first_word(tag: &str) -> String {
        tag.split_whitespace().next().unwrap_or("").to_string()
    }

    /// Parses a plist document; returns its top-level value.
    pub fn parse(text: &str) -> Result<Value, String> {
        let tokens = tokenize(text)?;
        let mut pos = 0;
        // Skip the <plist> wrapper when present.
        if matches!(tokens.first(), Some(Token::Open(t)) if t == "plist") {
            pos = 1;
        }
        let v = value(&tokens, &mut pos)?;
        Ok(v)
    }

    fn text_until_close(tokens: &[Token], pos: &mut usize, tag: &str) -> Result<String, String> {
        let mut s = String::new();
        if let Some(Token::Text(t)) = tokens.get(*pos) {
            s = t.clone();
            *pos += 1;
        }
        match tokens.get(*pos) {
            Some(Token::Close(t)) if t == tag => {
                *pos += 1;
                Ok(s)
            }
            other => Err(format!("expected </{tag}>, found {other:?}")),
        }
    }

    fn value(tokens: &[Token], pos: &mut usize) -> Result<Value, String> {
        let tok = tokens.get(*pos).ok_or("unexpected end of document")?;
        *pos += 1;
        match tok {
            Token::Empty(t) => match t.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "dict" => Ok(Value::Dict(Vec::new())),
                "array" => Ok(Value::Array(Vec::new())),
                "string" => Ok(Value::String(String::new())),
                other => Err(format!("unexpected <{other}/>")),
            },
            Token::Open(t) => match t.as_str() {
                "dict" => {
                    let mut items = Vec::new();
                    loop {
                        match tokens.get(*pos) {
                            Some(Token::Close(c)) if c == "dict" => {
                                *pos += 1;
                                return Ok(Value::Dict(items));
                            }
                            Some(Token::Open(k)) if k == "key" => {
                                *pos += 1;
                                let key = text_until_close(tokens, pos, "key")?;
                                let v = value(tokens, pos)?;
                                items.push((key.trim().to_string(), v));
                            }
                            other => {
                                return Err(format!("expected <key> in dict, found {other:?}"))
                            }
                        }
                    }
                }
                "array" => {
                    let mut items = Vec::new();
                    loop {
                        match tokens.get(*pos) {
                            Some(Token::Close(c)) if c == "array" => {
                                *pos += 1;
                                return Ok(Value::Array(items));
                            }
                            Some(_) => items.push(value(tokens, pos)?),
                            None => return Err("unterminated array".into()),
                        }
                    }
                }
                "string" | "date" | "data" => Ok(Value::String(text_until_close(tokens, pos, t)?)),
                "integer" => {
                    let s = text_until_close(tokens, pos, "integer")?;
                    s.trim()
                        .parse()
                        .map(Value::Integer)
                        .map_err(|_| format!("bad integer {s:?}"))
                }
                "real" => {
                    let s = text_until_close(tokens, pos, "real")?;
                    s.trim()
                        .parse()
                        .map(Value::Real)
                        .map_err(|_| format!("bad real {s:?}"))
                }
                other => Err(format!("unexpected <{other}>")),
            },
            other => Err(format!("unexpected {other:?}")),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_nested_values() {
            let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" "x.dtd">
<plist version="1.0">
<dict>
  <!-- a comment -->
  <key>a</key><array><integer>-3</integer><real>1.5</real><true/></array>
  <key>b</key><dict><key>c</key><string>x &amp; y</string></dict>
  <key>d</key><dict></dict>
  <key>e</key><string/>
</dict>
</plist>"#;
            let v = parse(doc).unwrap();
            let a = v.get("a").unwrap().as_array().unwrap();
            assert_eq!(a[0].as_int(), Some(-3));
            assert_eq!(a[1].as_f64(), Some(1.5));
            assert_eq!(a[2], Value::Bool(true));
            assert_eq!(
                v.get("b").unwrap().get("c").unwrap().as_str(),
                Some("x & y")
            );
            assert_eq!(v.get("d"), Some(&Value::Dict(vec![])));
            assert_eq!(v.get("e").unwrap().as_str(), Some(""));
            assert!(parse("<dict><key>a</key>").is_err());
            assert!(parse("<dict><key>a</key><integer>x</integer></dict>").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Array3<f32> {
        Array3::from_shape_fn((3, 4, 5), |(s, r, c)| {
            (s as f32 * 1000.0 - 1024.0) + r as f32 * 10.0 + c as f32
        })
    }

    #[test]
    fn raw_round_trips_every_dtype_and_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample();
        for dtype in [RawDtype::I16, RawDtype::U16, RawDtype::F32] {
            for endian in [Endian::Little, Endian::Big] {
                let want = if dtype == RawDtype::U16 {
                    v.mapv(|x| x.max(0.0))
                } else {
                    v.clone()
                };
                let bytes = encode_raw_volume(&v, dtype, endian).unwrap();
                assert_eq!(bytes.len(), 60 * dtype.size());
                let got = parse_raw_volume(&bytes, [3, 4, 5], dtype, endian, 0).unwrap();
                assert_eq!(got.hu, want, "{dtype:?} {endian:?}");
                // With a header in a file.
                let path = dir.path().join(format!("{dtype:?}{endian:?}.raw"));
                let mut with_header = vec![0xAB; 17];
                with_header.extend_from_slice(&bytes);
                std::fs::write(&path, &with_header).unwrap();
                let got = read_raw_volume(&path, [3, 4, 5], dtype, endian, 17).unwrap();
                assert_eq!(got.hu, want);
                assert_eq!(got.pixel_spacing, None);
            }
        }
        // Known bytes: int16 -1024 little-endian is 00 FC; big-endian FC 00.
        let le =
            parse_raw_volume(&[0x00, 0xFC], [1, 1, 1], RawDtype::I16, Endian::Little, 0).unwrap();
        assert_eq!(le.hu[[0, 0, 0]], -1024.0);
        let be = parse_raw_volume(&[0xFC, 0x00], [1, 1, 1], RawDtype::I16, Endian::Big, 0).unwrap();
        assert_eq!(be.hu[[0, 0, 0]], -1024.0);
        let u =
            parse_raw_volume(&[0x00, 0xFC], [1, 1, 1], RawDtype::U16, Endian::Little, 0).unwrap();
        assert_eq!(u.hu[[0, 0, 0]], 64512.0);
        // The path helper writes the same bytes.
        let p = dir.path().join("w.raw");
        write_raw_volume(&p, &v, RawDtype::I16, Endian::Big).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            encode_raw_volume(&v, RawDtype::I16, Endian::Big).unwrap()
        );
        assert_eq!(RawDtype::default(), RawDtype::I16);
        assert_eq!(RawDtype::from_name("<i2").unwrap(), RawDtype::I16);
        assert!(RawDtype::from_name("float64").is_err());
    }

    #[test]
    fn size_errors_name_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.raw");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let msg = read_raw_volume(&path, [1, 5, 5], RawDtype::I16, Endian::Little, 0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("longer") && msg.contains("100 bytes") && msg.contains("needs 50"),
            "{msg}"
        );
        let msg = read_raw_volume(&path, [2, 5, 5], RawDtype::F32, Endian::Little, 4)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("shorter") && msg.contains("100 bytes") && msg.contains("needs 204"),
            "{msg}"
        );
        let msg = parse_raw_volume(&[0; 7], [1, 2, 2], RawDtype::I16, Endian::Little, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("7 bytes") && msg.contains("needs 8"), "{msg}");
        assert!(parse_raw_volume(&[], [0, 2, 2], RawDtype::I16, Endian::Little, 0).is_err());
        assert!(
            parse_raw_volume(&[], [usize::MAX, 2, 2], RawDtype::I16, Endian::Little, 0).is_err()
        );
        assert!(matches!(
            read_raw_volume(
                &dir.path().join("missing"),
                [1, 1, 1],
                RawDtype::I16,
                Endian::Little,
                0
            ),
            Err(ImagingError::Io { .. })
        ));
        let mut nan = Array3::<f32>::zeros((1, 1, 2));
        nan[[0, 0, 1]] = f32::NAN;
        assert!(encode_raw_volume(&nan, RawDtype::F32, Endian::Little).is_err());
    }

    /// Builds a small `.inv3` (gzipped tar) in memory.
    fn make_inv3(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("tmpdir/{name}"), *data)
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn main_plist(shape: [usize; 3], dtype: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>matrix</key><dict><key>dtype</key><string>{dtype}</string>
<key>filename</key><string>matrix.dat</string>
<key>shape</key><array><integer>{}</integer><integer>{}</integer><integer>{}</integer></array></dict>
<key>modality</key><string>CT</string>
<key>spacing</key><array><real>0.5</real><real>0.75</real><integer>2</integer></array>
</dict></plist>"#,
            shape[0], shape[1], shape[2]
        )
    }

    #[test]
    fn inv3_from_memory_with_and_without_metadata() {
        let v = sample();
        let data = encode_raw_volume(&v, RawDtype::I16, Endian::Little).unwrap();
        // Matrix before main.plist, a mask in between: still found.
        let plist = main_plist([3, 4, 5], "int16");
        let bytes = make_inv3(&[
            ("matrix.dat", &data),
            ("mask_0.dat", &[1, 2, 3]),
            ("main.plist", plist.as_bytes()),
        ]);
        let (vol, meta) = parse_inv3(&bytes[..]).unwrap();
        assert_eq!(vol.hu, v);
        assert_eq!(meta.shape, [3, 4, 5]);
        assert_eq!(meta.spacing, Some([0.5, 0.75, 2.0]));
        assert_eq!(vol.pixel_spacing, Some([0.75, 0.5]));
        assert_eq!(meta.modality.as_deref(), Some("CT"));

        // Shape in the plist disagreeing with the data: both sizes in the error.
        let plist = main_plist([3, 4, 6], "int16");
        let bytes = make_inv3(&[("main.plist", plist.as_bytes()), ("matrix.dat", &data)]);
        let msg = parse_inv3(&bytes[..]).unwrap_err().to_string();
        assert!(
            msg.contains("120 bytes") && msg.contains("needs 144"),
            "{msg}"
        );

        // No plist: the fallback shape, which these bytes do not match.
        let bytes = make_inv3(&[("matrix.dat", &data)]);
        let msg = parse_inv3(&bytes[..]).unwrap_err().to_string();
        assert!(
            msg.contains("[108, 256, 256]") && msg.contains("120 bytes"),
            "{msg}"
        );

        // No matrix at all, and not an archive.
        let plist = main_plist([3, 4, 5], "int16");
        let bytes = make_inv3(&[("main.plist", plist.as_bytes())]);
        assert!(parse_inv3(&bytes[..])
            .unwrap_err()
            .to_string()
            .contains("no volume file"));
        assert!(parse_inv3(&b"plain text"[..]).is_err());
        assert!(parse_main_plist(&main_plist([3, 4, 5], "complex128")).is_err());
        assert!(read_inv3(Path::new("/nonexistent/x.inv3")).is_err());
    }

    #[test]
    fn reads_the_real_cranium_inv3_like_numpy() {
        let path = default_inv3_path().unwrap_or_else(|| {
            panic!("Cranium.inv3 not found in {INV3_PATHS:?}: install the Debian package invesalius-examples")
        });
        let (vol, meta) = read_inv3_with_meta(&path).unwrap();
        assert_eq!(vol.hu.dim(), (108, 256, 256));
        assert_eq!(meta.dtype, RawDtype::I16);
        let sp = meta.spacing.unwrap();
        assert!(
            (sp[0] - 0.9570312).abs() < 1e-6 && (sp[2] - 1.5).abs() < 1e-9,
            "{sp:?}"
        );
        let (min, max) = vol
            .hu
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(min <= -1000.0, "min {min}");
        assert!(max > 1000.0, "max {max}");
        // A central block of a middle slice is brain: soft-tissue HU.
        let centre = vol.hu.slice(ndarray::s![50..58, 112..144, 112..144]);
        let mean = centre.iter().map(|&x| f64::from(x)).sum::<f64>() / centre.len() as f64;
        assert!((0.0..80.0).contains(&mean), "central mean {mean} HU");

        // Exact equality with numpy reading the same archive.
        let dir = tempfile::tempdir().unwrap();
        let npy = dir.path().join("vol.npy");
        crate::npy::write_volume(&npy, &vol.hu).unwrap();
        let out = ldct_testkit::run_python(
            r#"
import sys, tarfile, plistlib, numpy as np
with tarfile.open(sys.argv[1], "r:gz") as t:
    names = {m.name.split("/")[-1]: m for m in t.getmembers()}
    meta = plistlib.loads(t.extractfile(names["main.plist"]).read())
    raw = t.extractfile(names[meta["matrix"]["filename"]]).read()
ref = np.frombuffer(raw, dtype="<i2").reshape(meta["matrix"]["shape"])
ours = np.load(sys.argv[2])
assert ours.shape == ref.shape, (ours.shape, ref.shape)
assert np.array_equal(ours, ref.astype(np.float32)), "volumes differ"
print(ref.shape, int(ref.astype(np.int64).sum()), list(meta["spacing"]))
"#,
            &[path.to_str().unwrap(), npy.to_str().unwrap()],
        );
        let sum: f64 = vol.hu.iter().map(|&x| f64::from(x)).sum();
        assert!(
            out.contains(&format!(" {} ", sum as i64)),
            "python: {out}, ours sum {sum}"
        );
    }
}
