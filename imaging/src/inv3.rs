//! InVesalius `.inv3` projects: a gzipped tar holding `<dir>/main.plist` (Apple XML
//! plist) and the volume `<dir>/matrix.dat`. `main.plist` has a `matrix` dict with
//! `dtype` (e.g. `int16`), `filename` and `shape` `[slices, rows, cols]`, and a
//! top-level `spacing` `[x, y, z]` in mm (x along columns). `matrix.dat` is a raw
//! little-endian array (numpy memmap) of HU in that shape ([`crate::raw`]). The Debian
//! package `invesalius-examples` ships a real head CT, `Cranium.inv3` (108 x 256 x 256
//! int16, spacing 0.957 x 0.957 x 1.5 mm); [`default_inv3_path`] finds it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ImagingError, Result};
use crate::image::CtVolume;
use crate::raw::{parse_raw_volume, Endian, RawDtype};

/// Archive members larger than this are refused before they are read (a 2048^3 int16
/// volume is 16 GiB; real projects are far smaller).
pub const MAX_MEMBER_BYTES: u64 = 4 << 30;

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
            let size = entry.size();
            if size > MAX_MEMBER_BYTES {
                return Err(ImagingError::Raw(format!(
                    "{name} is {size} bytes, more than the {MAX_MEMBER_BYTES}-byte limit"
                )));
            }
            let mut data = Vec::new();
            (&mut entry)
                .take(MAX_MEMBER_BYTES)
                .read_to_end(&mut data)
                .map_err(tar_err)?;
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
    use crate::raw::encode_raw_volume;
    use ndarray::Array3;

    fn sample() -> Array3<f32> {
        Array3::from_shape_fn((3, 4, 5), |(s, r, c)| {
            (s as f32 * 1000.0 - 1024.0) + r as f32 * 10.0 + c as f32
        })
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
