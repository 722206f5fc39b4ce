//! NRRD volumes (`.nrrd` with attached data, `.nhdr` with a detached data file): a text
//! header (`NRRD0001` to `NRRD0005`, `field: value` lines, ending at a blank line)
//! followed by the samples.
//!
//! - `type`: the integer and real types (`short`, `int16`, `unsigned char`, `float`,
//!   `double`, ...); `block` is refused.
//! - `encoding`: `raw`, `gzip` (`gz`) and `ascii` (`text`, `txt`); `bzip2` and `hex` are
//!   refused with a clear error.
//! - `dimension` 2 or 3 (a 4-D file with a single volume is 3-D): `sizes` lists the
//!   fastest axis first, so `sizes: cols rows slices`.
//! - `endian`, `byte skip` (`-1`: the data are the last bytes of a raw file), `line
//!   skip`, `data file` (one file, relative to the header's folder; lists and format
//!   patterns are refused).
//! - Geometry: `space directions` (or `spacings`) give the pixel spacing; with a
//!   `space` of LPS, RAS or LAS the axial volume is turned to DICOM's display
//!   orientation ([`crate::orient`]).
//! - Values are taken as stored (HU for CT).
//! - Bad input is an error, never a panic or an unbounded allocation: the header is at
//!   most [`MAX_HEADER_BYTES`], and no more than the declared sample bytes (at most
//!   [`MAX_SAMPLE_BYTES`]) are read or inflated.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::Array3;
use serde::Serialize;

use crate::error::{ImagingError, Result};
use crate::image::CtVolume;
use crate::orient::{self, AxisDirections, Reorientation};
use crate::sample::{self, Endian, SampleType};

/// Sample data larger than this (as stored) is refused before it is read.
pub const MAX_SAMPLE_BYTES: usize = 2 << 30;
/// Headers larger than this are refused.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// What the header says, for records and checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NrrdMeta {
    /// The stored sample type (numpy's name).
    pub datatype: &'static str,
    pub encoding: String,
    /// `[slices, rows, cols]` as stored.
    pub shape: [usize; 3],
    /// The `space` field, when given.
    pub space: Option<String>,
    /// Spacing `[x (columns), y (rows), z (slices)]` in mm, when given.
    pub spacing_mm: Option<[f64; 3]>,
    pub reoriented: Reorientation,
    /// The detached data file, when there is one.
    pub data_file: Option<PathBuf>,
}

fn bad(msg: impl Into<String>) -> ImagingError {
    ImagingError::Invalid(format!("NRRD: {}", msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Raw,
    Gzip,
    Ascii,
}

/// The header's fields, raw.
#[derive(Debug, Default)]
struct Header {
    fields: Vec<(String, String)>,
    /// Bytes of the header including the blank line.
    len: usize,
    /// Whether a blank line ended it (else the file ended).
    terminated: bool,
}

impl Header {
    fn get(&self, names: &[&str]) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    }
}

fn read_header(reader: &mut impl BufRead) -> Result<Header> {
    let mut h = Header::default();
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take((MAX_HEADER_BYTES + 1 - h.len) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("cannot read the header: {e}")))?;
        if n == 0 {
            break;
        }
        h.len += n;
        if h.len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "header is longer than {MAX_HEADER_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| bad("header is not text"))?
            .trim_end_matches(['\n', '\r']);
        if first {
            first = false;
            match text.strip_prefix("NRRD000") {
                Some("1" | "2" | "3" | "4" | "5") => continue,
                _ => {
                    return Err(bad(format!(
                        "first line {:?} is not a NRRD magic (NRRD0001 to NRRD0005)",
                        text.chars().take(16).collect::<String>()
                    )))
                }
            }
        }
        if text.is_empty() {
            h.terminated = true;
            break;
        }
        if text.starts_with('#') || text.contains(":=") {
            continue; // comments and key/value pairs
        }
        let (k, v) = text
            .split_once(": ")
            .ok_or_else(|| bad(format!("malformed header line {text:?}")))?;
        h.fields
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if first {
        return Err(bad("empty file"));
    }
    Ok(h)
}

fn sample_type(name: &str) -> Result<SampleType> {
    let n = name.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "signed char" | "int8" | "int8_t" => SampleType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => SampleType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            SampleType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => {
            SampleType::U16
        }
        "int" | "signed int" | "int32" | "int32_t" => SampleType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => SampleType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => SampleType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            SampleType::U64
        }
        "float" => SampleType::F32,
        "double" => SampleType::F64,
        _ => return Err(bad(format!("type {name:?} is not supported"))),
    })
}

fn encoding(name: &str) -> Result<Encoding> {
    match name.to_ascii_lowercase().as_str() {
        "raw" => Ok(Encoding::Raw),
        "gzip" | "gz" => Ok(Encoding::Gzip),
        "ascii" | "text" | "txt" => Ok(Encoding::Ascii),
        other => Err(bad(format!(
            "encoding {other:?} is not supported (raw, gzip or ascii)"
        ))),
    }
}

/// `(x,y,z)` vectors or `none`, one per axis.
fn parse_vectors(s: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("none") {
            out.push(None);
            rest = r.trim_start();
            continue;
        }
        let r = rest
            .strip_prefix('(')
            .ok_or_else(|| bad(format!("bad vector list {s:?}")))?;
        let end = r
            .find(')')
            .ok_or_else(|| bad(format!("bad vector list {s:?}")))?;
        let v: Vec<f64> = r[..end]
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("bad vector in {s:?}")))?;
        out.push(Some(v));
        rest = r[end + 1..].trim_start();
    }
    Ok(out)
}

/// Reads a `.nrrd` or `.nhdr` file.
pub fn read_nrrd(path: &Path) -> Result<(CtVolume, NrrdMeta)> {
    let file = std::fs::File::open(path).map_err(|e| ImagingError::io(path, e))?;
    parse_nrrd(BufReader::new(file), path.parent(), MAX_SAMPLE_BYTES)
        .map_err(|e| ImagingError::Invalid(format!("{}: {e}", path.display())))
}

/// Parses a NRRD header and its data: attached (after the blank line of `reader`) or
/// detached (`data file`, relative to `dir`).
pub fn parse_nrrd(
    mut reader: impl BufRead,
    dir: Option<&Path>,
    max_sample_bytes: usize,
) -> Result<(CtVolume, NrrdMeta)> {
    let h = read_header(&mut reader)?;
    let need = |names: &[&str]| {
        h.get(names)
            .ok_or_else(|| bad(format!("header has no {:?} field", names[0])))
    };
    let ty = sample_type(need(&["type"])?)?;
    let enc = encoding(need(&["encoding"])?)?;
    let dim: usize = need(&["dimension"])?
        .parse()
        .map_err(|_| bad("bad dimension"))?;
    let sizes: Vec<usize> = need(&["sizes"])?
        .split_whitespace()
        .map(|x| x.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("bad sizes"))?;
    if sizes.len() != dim {
        return Err(bad(format!(
            "sizes has {} entries for dimension {dim}",
            sizes.len()
        )));
    }
    if !(2..=4).contains(&dim) {
        return Err(bad(format!("dimension {dim} is not a 2-D or 3-D image")));
    }
    if sizes.contains(&0) {
        return Err(bad(format!("sizes {sizes:?} has a zero")));
    }
    if dim == 4 && sizes[3] != 1 {
        return Err(bad(format!(
            "sizes {sizes:?}: a 4-D image with more than one volume is not a CT volume"
        )));
    }
    let (cols, rows, slices) = (sizes[0], sizes[1], if dim >= 3 { sizes[2] } else { 1 });
    let nbytes = sample::byte_len(&[slices, rows, cols], ty, max_sample_bytes)
        .map_err(|e| bad(e.to_string()))?;
    let endian = match h.get(&["endian"]) {
        Some("little") => Endian::Little,
        Some("big") => Endian::Big,
        Some(other) => return Err(bad(format!("endian {other:?} (little or big)"))),
        None if ty.size() == 1 || enc == Encoding::Ascii => Endian::Little,
        None => return Err(bad("header has no \"endian\" field for multi-byte samples")),
    };
    let line_skip: usize = h
        .get(&["line skip", "lineskip"])
        .map(|v| v.parse().map_err(|_| bad(format!("bad line skip {v:?}"))))
        .transpose()?
        .unwrap_or(0);
    let byte_skip: i64 = h
        .get(&["byte skip", "byteskip"])
        .map(|v| v.parse().map_err(|_| bad(format!("bad byte skip {v:?}"))))
        .transpose()?
        .unwrap_or(0);
    if byte_skip < -1 {
        return Err(bad(format!("byte skip {byte_skip}")));
    }
    let data_file = match h.get(&["data file", "datafile"]) {
        None => None,
        Some(v) => {
            if v.starts_with("LIST") || v.contains('%') || v.split_whitespace().count() > 1 {
                return Err(bad(format!(
                    "data file {v:?}: lists and patterns of data files are not supported"
                )));
            }
            let p = PathBuf::from(v);
            Some(if p.is_absolute() {
                p
            } else {
                dir.ok_or_else(|| bad("a detached data file needs the header's path"))?
                    .join(p)
            })
        }
    };
    if data_file.is_none() && !h.terminated {
        return Err(bad(
            "the header has no blank line and no data file: no data",
        ));
    }

    // The bytes that hold the (possibly compressed) samples.
    let mut source: Box<dyn Read> = match &data_file {
        Some(p) => {
            let mut f = std::fs::File::open(p).map_err(|e| ImagingError::io(p, e))?;
            if byte_skip == -1 && enc == Encoding::Raw {
                let len = f.metadata().map_err(|e| ImagingError::io(p, e))?.len();
                let start = len
                    .checked_sub(nbytes as u64)
                    .ok_or_else(|| bad("data file is shorter than the samples"))?;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| ImagingError::io(p, e))?;
            }
            Box::new(BufReader::new(f))
        }
        None => {
            if byte_skip == -1 {
                return Err(bad(
                    "byte skip -1 needs a detached raw data file (attached: give the offset)",
                ));
            }
            Box::new(reader)
        }
    };
    // Line skip counts lines of the data file before the data (before decompression).
    for _ in 0..line_skip {
        let mut buf = [0u8; 1];
        loop {
            match source.read(&mut buf) {
                Ok(0) => return Err(bad("data ends inside the skipped lines")),
                Ok(_) if buf[0] == b'\n' => break,
                Ok(_) => {}
                Err(e) => return Err(bad(format!("cannot read the data: {e}"))),
            }
        }
    }
    let mut source: Box<dyn Read> = match enc {
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
        Encoding::Raw | Encoding::Ascii => source,
    };
    if byte_skip > 0 {
        let skip = byte_skip as u64;
        let n = std::io::copy(&mut (&mut source).take(skip), &mut std::io::sink())
            .map_err(|e| bad(format!("cannot read the data: {e}")))?;
        if n != skip {
            return Err(bad("data ends inside the skipped bytes"));
        }
    }
    let count = slices * rows * cols;
    let values = match enc {
        Encoding::Raw | Encoding::Gzip => {
            let mut data = Vec::new();
            source
                .take(nbytes as u64)
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("cannot read the data: {e}")))?;
            if data.len() < nbytes {
                return Err(bad(format!(
                    "truncated: {cols}x{rows}x{slices} {} needs {nbytes} bytes, found {}",
                    ty.name(),
                    data.len()
                )));
            }
            sample::decode(&data, ty, endian)
        }
        Encoding::Ascii => {
            // At most 64 characters per number.
            let mut text = String::new();
            source
                .take(64 * count as u64 + 64)
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("cannot read the ascii data: {e}")))?;
            let v: Vec<f32> = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .take(count)
                .map(|t| t.parse::<f64>().map(|x| x as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad("ascii data holds a non-number"))?;
            if v.len() < count {
                return Err(bad(format!(
                    "truncated: {count} values needed, found {}",
                    v.len()
                )));
            }
            v
        }
    };
    if !values.iter().all(|v| v.is_finite()) {
        return Err(bad("the image holds NaN or infinite values"));
    }
    let volume =
        Array3::from_shape_vec((slices, rows, cols), values).map_err(|e| bad(e.to_string()))?;

    // Geometry.
    let directions = h
        .get(&["space directions"])
        .map(parse_vectors)
        .transpose()?;
    let spacing_mm: Option<[f64; 3]> = match &directions {
        Some(d) => {
            let norm = |k: usize| {
                d.get(k)
                    .and_then(|v| v.as_ref())
                    .map(|v| v.iter().map(|x| x * x).sum::<f64>().sqrt())
            };
            match (norm(0), norm(1)) {
                (Some(x), Some(y)) => Some([x, y, norm(2).unwrap_or(f64::NAN)]),
                _ => None,
            }
        }
        None => h.get(&["spacings"]).and_then(|s| {
            let v: Vec<f64> = s
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect();
            (v.len() >= 2).then(|| [v[0], v[1], v.get(2).copied().unwrap_or(f64::NAN)])
        }),
    };
    let space = h.get(&["space"]).map(str::to_string);
    // Signs that take the space's x and y to LPS.
    let to_lps = match space.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("left-posterior-superior" | "lps" | "scanner-xyz") => Some([1.0, 1.0]),
        Some("right-anterior-superior" | "ras") => Some([-1.0, -1.0]),
        Some("left-anterior-superior" | "las") => Some([1.0, -1.0]),
        _ => None,
    };
    let spacing2 = spacing_mm.map(|s| [s[1], s[0]]);
    let axes = directions.as_ref().and_then(|d| {
        let v = |k: usize| -> Option<[f64; 3]> {
            let v = d.get(k)?.as_ref()?;
            (v.len() == 3).then(|| [v[0], v[1], v[2]])
        };
        Some((v(0)?, v(1)?))
    });
    let (volume, spacing2, reoriented) = match (axes, to_lps) {
        (Some((c, r)), Some([sx, sy])) => {
            let dirs = AxisDirections {
                cols: [sx * c[0], sy * c[1], c[2]],
                rows: [sx * r[0], sy * r[1], r[2]],
            };
            let (v, s, o) = orient::to_display(volume, spacing2.unwrap_or([f64::NAN; 2]), dirs);
            (v, Some(s), o)
        }
        _ => (volume, spacing2, Reorientation::default()),
    };
    let pixel_spacing = spacing2.filter(|s| s.iter().all(|v| v.is_finite() && *v > 0.0));
    Ok((
        CtVolume {
            hu: volume,
            pixel_spacing,
        },
        NrrdMeta {
            datatype: ty.name(),
            encoding: format!("{enc:?}").to_ascii_lowercase(),
            shape: [slices, rows, cols],
            space,
            spacing_mm,
            reoriented,
            data_file,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn vol() -> Array3<i16> {
        Array3::from_shape_fn((2, 3, 4), |(s, r, c)| (s * 100 + r * 10 + c) as i16 - 1000)
    }

    fn header(encoding: &str, extra: &str) -> String {
        format!(
            "NRRD0004\n# a comment\ntype: short\ndimension: 3\nsizes: 4 3 2\n\
             space: left-posterior-superior\n\
             space directions: (0.5,0,0) (0,0.75,0) (0,0,2)\nkinds: domain domain domain\n\
             endian: little\nencoding: {encoding}\nspace origin: (1,2,3)\n{extra}"
        )
    }

    fn le_bytes() -> Vec<u8> {
        vol().iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn raw_gzip_and_ascii_attached() {
        let mut raw = header("raw", "\n").into_bytes();
        raw.extend(le_bytes());
        let mut gz = header("gzip", "\n").into_bytes();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&le_bytes()).unwrap();
        gz.extend(enc.finish().unwrap());
        let mut ascii = header("ascii", "\n").into_bytes();
        for x in vol().iter() {
            ascii.extend(format!("{x} ").as_bytes());
        }
        for bytes in [raw, gz, ascii] {
            let (v, m) = parse_nrrd(&bytes[..], None, MAX_SAMPLE_BYTES).unwrap();
            assert_eq!(v.hu, vol().mapv(f32::from));
            assert_eq!(v.pixel_spacing, Some([0.75, 0.5]));
            assert_eq!(m.spacing_mm, Some([0.5, 0.75, 2.0]));
            assert_eq!(m.reoriented, Reorientation::default());
        }
    }

    #[test]
    fn ras_space_is_flipped_and_detached_data_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = b"skip me\n".to_vec();
        data.extend(le_bytes());
        std::fs::write(dir.path().join("v.raw"), &data).unwrap();
        let text = header("raw", "data file: v.raw\nline skip: 1\n")
            .replace("left-posterior-superior", "RAS");
        std::fs::write(dir.path().join("v.nhdr"), text).unwrap();
        let (v, m) = read_nrrd(&dir.path().join("v.nhdr")).unwrap();
        assert!(m.reoriented.flipped_cols && m.reoriented.flipped_rows);
        assert_eq!(v.hu[[1, 0, 0]], f32::from(vol()[[1, 2, 3]]));
        // byte skip -1: the data are the file's last bytes.
        let text = header("raw", "data file: v.raw\nbyte skip: -1\n");
        std::fs::write(dir.path().join("w.nhdr"), text).unwrap();
        let (v, _) = read_nrrd(&dir.path().join("w.nhdr")).unwrap();
        assert_eq!(v.hu, vol().mapv(f32::from));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut good = header("raw", "\n").into_bytes();
        good.extend(le_bytes());
        assert!(parse_nrrd(&good[..], None, MAX_SAMPLE_BYTES).is_ok());
        let text = String::from_utf8_lossy(&good[..good.len() - 48]).to_string();
        let cases = [
            (text.replace("NRRD0004", "NRRD0009"), "magic"),
            (text.replace("type: short", "type: block"), "not supported"),
            (text.replace("encoding: raw", "encoding: bzip2"), "bzip2"),
            (text.replace("sizes: 4 3 2", "sizes: 4 3"), "2 entries"),
            (text.replace("sizes: 4 3 2", "sizes: 4 0 2"), "has a zero"),
            (
                text.replace("sizes: 4 3 2", "sizes: 65536 65536 65536"),
                "more than the limit",
            ),
            (text.replace("endian: little\n", ""), "no \"endian\""),
            (text.replace("type: short\n", ""), "no \"type\""),
            (
                text.replace("dimension: 3", "dimension: 5")
                    .replace("sizes: 4 3 2", "sizes: 4 3 2 2 2"),
                "not a 2-D",
            ),
            (
                text.replace("encoding: raw", "encoding: raw\ndata file: LIST"),
                "lists",
            ),
            (text.replace("\n\n", "\n"), "no blank line"),
        ];
        for (t, want) in cases {
            let e = parse_nrrd(t.as_bytes(), None, MAX_SAMPLE_BYTES)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        for n in 0..good.len() {
            assert!(
                parse_nrrd(&good[..n], None, MAX_SAMPLE_BYTES).is_err(),
                "{n}"
            );
        }
        let huge = format!("NRRD0004\n{}", "# x\n".repeat(MAX_HEADER_BYTES / 4 + 1));
        let e = parse_nrrd(huge.as_bytes(), None, MAX_SAMPLE_BYTES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
