//! PNG writers: 16-bit HU images, windowed 8-bit previews and labelled comparison strips.
//!
//! Every writer has an `encode_*` form returning the PNG bytes (the server sends them
//! without touching the disk) and a `write_*` form writing a file.
//!
//! - 16-bit grayscale ([`encode_png16`]): stores `round(HU + offset)` clamped to
//!   `0..=65535`. With the default [`HU_OFFSET`] of 32768, HU in `[-32768, 32767]`
//!   survive exactly when integer (so air at -1000 HU is stored as 31768). Decode with
//!   `stored - offset`; [`decode_png16`] does so. [`encode_png16_raw`] stores `u16`
//!   values as given (no offset).
//! - 8-bit preview ([`encode_preview`]): a HU window mapped linearly to `0..=255`
//!   (`round(255 * (clip(HU) - lo) / (hi - lo))`), NaN shown as 0.
//! - Comparison strip ([`comparison_png_bytes`]): panels side by side, each with a black
//!   label band above it holding its label in white (the [`crate::font`] bitmap font),
//!   separated by [`SEPARATOR_WIDTH`]-pixel white lines. Intensity panels use the given
//!   window; difference panels use a symmetric window `[-d, d]` HU with mid-gray (128)
//!   at 0 (default `d` = [`DIFF_HALF_WIDTH`] = 100 HU) and their label says so, e.g.
//!   `difference +-100 HU`.

use std::io::Cursor;
use std::path::Path;

use ndarray::Array2;

use crate::error::{ImagingError, Result};
use crate::font;
use crate::window::Window;

/// Default offset of the 16-bit encoding: `stored = HU + 32768`.
pub const HU_OFFSET: f32 = 32768.0;
/// Default half width (HU) of a difference panel's symmetric window.
pub const DIFF_HALF_WIDTH: f32 = 100.0;
/// Width in pixels of the separator between comparison panels.
pub const SEPARATOR_WIDTH: usize = 2;
/// Gray value of the separators.
pub const SEPARATOR_VALUE: u8 = 255;
/// Padding in pixels around the label text in a comparison's label band.
pub const LABEL_PAD: usize = 3;

fn png_err(e: impl std::fmt::Display) -> ImagingError {
    ImagingError::Png(e.to_string())
}

fn dims_u32(rows: usize, cols: usize) -> Result<(u32, u32)> {
    if rows == 0 || cols == 0 {
        return Err(ImagingError::Png(format!(
            "cannot encode an empty image ({rows}x{cols})"
        )));
    }
    let w = u32::try_from(cols).map_err(|_| ImagingError::Png("image too wide".into()))?;
    let h = u32::try_from(rows).map_err(|_| ImagingError::Png("image too tall".into()))?;
    Ok((w, h))
}

/// Encodes raw samples (`rows x cols`, row-major) as a grayscale PNG.
fn encode_gray(
    rows: usize,
    cols: usize,
    depth: ::png::BitDepth,
    samples: &[u8],
) -> Result<Vec<u8>> {
    let (w, h) = dims_u32(rows, cols)?;
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, w, h);
        enc.set_color(::png::ColorType::Grayscale);
        enc.set_depth(depth);
        enc.set_compression(::png::Compression::Fast);
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(samples).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    Ok(out)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| ImagingError::io(path, e))
}

/// 16-bit grayscale PNG of a HU image: each pixel stores `round(hu + offset)` clamped to
/// `0..=65535` (big-endian samples, as PNG requires). Use [`HU_OFFSET`] (32768) so
/// negative HU survive; integer HU in `[-offset, 65535 - offset]` round-trip exactly
/// through [`decode_png16`] with the same offset. Errors on NaN or infinite values and
/// on empty images.
pub fn encode_png16(hu: &Array2<f32>, offset: f32) -> Result<Vec<u8>> {
    if !offset.is_finite() {
        return Err(ImagingError::Invalid(format!(
            "PNG offset {offset} is not finite"
        )));
    }
    let (rows, cols) = hu.dim();
    let mut samples = Vec::with_capacity(rows * cols * 2);
    for &v in hu.iter() {
        if !v.is_finite() {
            return Err(ImagingError::NonFinite);
        }
        let s = (v + offset).round().clamp(0.0, 65535.0) as u16;
        samples.extend_from_slice(&s.to_be_bytes());
    }
    encode_gray(rows, cols, ::png::BitDepth::Sixteen, &samples)
}

/// Writes [`encode_png16`] to `path`.
pub fn write_png16(path: &Path, hu: &Array2<f32>, offset: f32) -> Result<()> {
    write_bytes(path, &encode_png16(hu, offset)?)
}

/// 16-bit grayscale PNG storing the `u16` values as given (no offset).
pub fn encode_png16_raw(values: &Array2<u16>) -> Result<Vec<u8>> {
    let (rows, cols) = values.dim();
    let samples: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    encode_gray(rows, cols, ::png::BitDepth::Sixteen, &samples)
}

/// Writes [`encode_png16_raw`] to `path`.
pub fn write_png16_raw(path: &Path, values: &Array2<u16>) -> Result<()> {
    write_bytes(path, &encode_png16_raw(values)?)
}

/// Decodes a 16-bit grayscale PNG written by [`encode_png16`]: `hu = stored - offset`.
/// Other PNG kinds are an error.
pub fn decode_png16(bytes: &[u8], offset: f32) -> Result<Array2<f32>> {
    let mut reader = ::png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(png_err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImagingError::Png("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(png_err)?;
    if info.color_type != ::png::ColorType::Grayscale || info.bit_depth != ::png::BitDepth::Sixteen
    {
        return Err(ImagingError::Png(format!(
            "expected 16-bit grayscale, found {:?} {:?}",
            info.color_type, info.bit_depth
        )));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let mut values = Vec::with_capacity(w * h);
    for row in buf.chunks_exact(info.line_size).take(h) {
        values.extend(
            row[..w * 2]
                .chunks_exact(2)
                .map(|b| f32::from(u16::from_be_bytes([b[0], b[1]])) - offset),
        );
    }
    Array2::from_shape_vec((h, w), values).map_err(png_err)
}

/// Reads a file written by [`write_png16`].
pub fn read_png16(path: &Path, offset: f32) -> Result<Array2<f32>> {
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    decode_png16(&bytes, offset)
}

#[inline]
fn to_u8(unit: f32) -> u8 {
    // NaN -> 0 (`as` saturates and maps NaN to 0).
    (unit * 255.0).round() as u8
}

/// The 8-bit display values of `hu` in `window`: `round(255 * (clip(HU) - lo) / width)`,
/// row-major. NaN maps to 0.
pub fn window_to_u8(hu: &Array2<f32>, window: Window) -> Vec<u8> {
    hu.iter().map(|&v| to_u8(window.to_unit(v))).collect()
}

/// Windowed 8-bit grayscale preview PNG of a HU image (see [`window_to_u8`]).
pub fn encode_preview(hu: &Array2<f32>, window: Window) -> Result<Vec<u8>> {
    let (rows, cols) = hu.dim();
    encode_gray(
        rows,
        cols,
        ::png::BitDepth::Eight,
        &window_to_u8(hu, window),
    )
}

/// Writes [`encode_preview`] to `path`.
pub fn write_preview(path: &Path, hu: &Array2<f32>, window: Window) -> Result<()> {
    write_bytes(path, &encode_preview(hu, window)?)
}

/// How a comparison panel is displayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKind {
    /// HU shown in the comparison's window.
    Intensity,
    /// A HU difference shown in a symmetric window around 0 (mid-gray = 0).
    Difference,
}

/// One panel of a comparison strip.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Text drawn in the label band above the panel.
    pub label: String,
    /// HU values (for a difference panel: HU differences).
    pub image: Array2<f32>,
    pub kind: PanelKind,
}

impl Panel {
    /// An intensity panel.
    pub fn intensity(label: impl Into<String>, image: Array2<f32>) -> Self {
        Self {
            label: label.into(),
            image,
            kind: PanelKind::Intensity,
        }
    }

    /// A difference panel.
    pub fn difference(label: impl Into<String>, image: Array2<f32>) -> Self {
        Self {
            label: label.into(),
            image,
            kind: PanelKind::Difference,
        }
    }

    /// `a - b` as a difference panel (errors if the sizes differ).
    pub fn difference_of(
        label: impl Into<String>,
        a: &Array2<f32>,
        b: &Array2<f32>,
    ) -> Result<Self> {
        if a.dim() != b.dim() {
            return Err(ImagingError::SizeMismatch {
                a: a.dim(),
                b: b.dim(),
            });
        }
        Ok(Self::difference(label, a - b))
    }
}

/// An 8-bit grayscale raster, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// Pixel at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }

    /// As PNG bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode_gray(
            self.height,
            self.width,
            ::png::BitDepth::Eight,
            &self.pixels,
        )
    }
}

/// Layout of a comparison strip, for callers (and tests) that need pixel positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComparisonLayout {
    /// Height of the label band above the panels.
    pub band_height: usize,
    /// Size of each panel image, `(rows, cols)`.
    pub panel: (usize, usize),
    /// Number of panels.
    pub count: usize,
}

impl ComparisonLayout {
    /// Left column of panel `i`.
    pub fn panel_x(&self, i: usize) -> usize {
        i * (self.panel.1 + SEPARATOR_WIDTH)
    }

    /// Total size `(width, height)`.
    pub fn size(&self) -> (usize, usize) {
        let w = self.count * self.panel.1 + (self.count.saturating_sub(1)) * SEPARATOR_WIDTH;
        (w, self.band_height + self.panel.0)
    }

    /// Text scale used for labels: 2 for panels at least 192 pixels wide, else 1.
    pub fn text_scale(&self) -> usize {
        if self.panel.1 >= 192 {
            2
        } else {
            1
        }
    }
}

/// The label drawn for a panel: a difference panel's label gains its scale.
pub fn panel_label(panel: &Panel, diff_half_width: f32) -> String {
    match panel.kind {
        PanelKind::Intensity => panel.label.clone(),
        PanelKind::Difference => format!("{} +-{} HU", panel.label, diff_half_width),
    }
}

/// Checks the panels and computes the layout.
pub fn comparison_layout(panels: &[Panel]) -> Result<ComparisonLayout> {
    let first = panels
        .first()
        .ok_or_else(|| ImagingError::Invalid("a comparison needs at least one panel".into()))?;
    let dim = first.image.dim();
    if dim.0 == 0 || dim.1 == 0 {
        return Err(ImagingError::Png(format!(
            "cannot draw an empty panel ({}x{})",
            dim.0, dim.1
        )));
    }
    for p in &panels[1..] {
        if p.image.dim() != dim {
            return Err(ImagingError::SizeMismatch {
                a: dim,
                b: p.image.dim(),
            });
        }
    }
    let mut layout = ComparisonLayout {
        band_height: 0,
        panel: dim,
        count: panels.len(),
    };
    layout.band_height = font::text_height(layout.text_scale()) + 2 * LABEL_PAD;
    Ok(layout)
}

/// Renders a labelled side-by-side strip (see the module docs). All panels must have the
/// same size. Difference panels use the window `[-diff_half_width, diff_half_width]`.
pub fn render_comparison(
    panels: &[Panel],
    window: Window,
    diff_half_width: f32,
) -> Result<GrayImage> {
    let diff_window = Window::new(-diff_half_width, diff_half_width)?;
    let layout = comparison_layout(panels)?;
    let (width, height) = layout.size();
    let (rows, cols) = layout.panel;
    let scale = layout.text_scale();
    let mut pixels = vec![0u8; width * height];

    // Separators run the full height.
    for i in 1..layout.count {
        let x0 = layout.panel_x(i) - SEPARATOR_WIDTH;
        for y in 0..height {
            pixels[y * width + x0..y * width + x0 + SEPARATOR_WIDTH].fill(SEPARATOR_VALUE);
        }
    }

    for (i, panel) in panels.iter().enumerate() {
        let x0 = layout.panel_x(i);
        // Label: drawn into a panel-wide band buffer so long labels clip at the panel edge.
        let mut band = vec![0u8; cols * layout.band_height];
        let label = panel_label(panel, diff_half_width);
        font::draw_text(&mut band, cols, LABEL_PAD, LABEL_PAD, &label, scale, 255);
        for y in 0..layout.band_height {
            pixels[y * width + x0..y * width + x0 + cols]
                .copy_from_slice(&band[y * cols..(y + 1) * cols]);
        }
        // Image.
        let w = match panel.kind {
            PanelKind::Intensity => window,
            PanelKind::Difference => diff_window,
        };
        for (r, row) in panel.image.rows().into_iter().enumerate() {
            let start = (layout.band_height + r) * width + x0;
            for (dst, &v) in pixels[start..start + cols].iter_mut().zip(row.iter()) {
                *dst = to_u8(w.to_unit(v));
            }
        }
        debug_assert!(rows == panel.image.nrows());
    }
    Ok(GrayImage {
        width,
        height,
        pixels,
    })
}

/// PNG bytes of a comparison strip with difference panels at +-[`DIFF_HALF_WIDTH`] HU.
pub fn comparison_png_bytes(panels: &[Panel], window: Window) -> Result<Vec<u8>> {
    render_comparison(panels, window, DIFF_HALF_WIDTH)?.encode()
}

/// Writes [`comparison_png_bytes`] to `path`.
pub fn write_comparison(path: &Path, panels: &[Panel], window: Window) -> Result<()> {
    write_bytes(path, &comparison_png_bytes(panels, window)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Decoded {
        width: usize,
        height: usize,
        color: ::png::ColorType,
        depth: ::png::BitDepth,
        data: Vec<u8>,
    }

    fn decode(bytes: &[u8]) -> Decoded {
        let mut reader = ::png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.line_size * info.height as usize);
        Decoded {
            width: info.width as usize,
            height: info.height as usize,
            color: info.color_type,
            depth: info.bit_depth,
            data: buf,
        }
    }

    fn ramp(rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(r, c)| {
            -1024.0 + (r * cols + c) as f32 * 37.0 % 4096.0
        })
    }

    #[test]
    fn png16_stores_hu_plus_offset_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let mut hu = ramp(5, 7);
        hu[[0, 0]] = -1000.0;
        hu[[0, 1]] = 0.0;
        hu[[0, 2]] = 3071.0;
        hu[[0, 3]] = -40000.0; // clamped to 0
        hu[[0, 4]] = 12.4; // rounded
        write_png16(&path, &hu, HU_OFFSET).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let d = decode(&bytes);
        assert_eq!((d.width, d.height), (7, 5));
        assert_eq!(d.color, ::png::ColorType::Grayscale);
        assert_eq!(d.depth, ::png::BitDepth::Sixteen);
        let px = |x: usize, y: usize| {
            let i = y * d.width * 2 + x * 2;
            u16::from_be_bytes([d.data[i], d.data[i + 1]])
        };
        assert_eq!(px(0, 0), 31768);
        assert_eq!(px(1, 0), 32768);
        assert_eq!(px(2, 0), 35839);
        assert_eq!(px(3, 0), 0);
        assert_eq!(px(4, 0), 32780);
        assert_eq!(px(3, 2), (hu[[2, 3]] + 32768.0) as u16);

        let back = read_png16(&path, HU_OFFSET).unwrap();
        for ((r, c), &v) in hu.indexed_iter() {
            let want = (v.round()).clamp(-32768.0, 32767.0);
            assert_eq!(back[[r, c]], want, "({r}, {c})");
        }
        // Integer HU round-trip exactly.
        let ints = ramp(16, 16);
        assert_eq!(
            decode_png16(&encode_png16(&ints, HU_OFFSET).unwrap(), HU_OFFSET).unwrap(),
            ints
        );
    }

    #[test]
    fn png16_raw_and_errors() {
        let v = Array2::from_shape_fn((3, 4), |(r, c)| (r * 20000 + c) as u16);
        let d = decode(&encode_png16_raw(&v).unwrap());
        assert_eq!(d.depth, ::png::BitDepth::Sixteen);
        assert_eq!(
            u16::from_be_bytes([d.data[2 * 8 + 2], d.data[2 * 8 + 3]]),
            40001
        );
        assert_eq!(
            decode_png16(&encode_png16_raw(&v).unwrap(), 0.0).unwrap()[[1, 3]],
            20003.0
        );

        let mut nan = Array2::<f32>::zeros((2, 2));
        nan[[1, 1]] = f32::NAN;
        assert!(matches!(
            encode_png16(&nan, HU_OFFSET),
            Err(ImagingError::NonFinite)
        ));
        assert!(encode_png16(&Array2::zeros((0, 3)), HU_OFFSET).is_err());
        // An 8-bit PNG is not a 16-bit HU image.
        let p8 = encode_preview(&Array2::zeros((2, 2)), Window::FULL).unwrap();
        assert!(decode_png16(&p8, HU_OFFSET).is_err());
        assert!(decode_png16(b"not a png", HU_OFFSET).is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = write_png16(&dir.path().join("no/such/dir.png"), &nan.mapv(|_| 0.0), 0.0);
        assert!(matches!(err, Err(ImagingError::Io { .. })));
    }

    #[test]
    fn preview_maps_window_to_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let mut hu = Array2::<f32>::zeros((4, 6));
        hu[[0, 0]] = -1000.0;
        hu[[0, 1]] = 1000.0;
        hu[[0, 2]] = -3000.0;
        hu[[0, 3]] = 3000.0;
        hu[[0, 4]] = 0.0;
        hu[[0, 5]] = f32::NAN;
        hu[[3, 5]] = 40.0;
        write_preview(&path, &hu, Window::FULL).unwrap();
        let d = decode(&std::fs::read(&path).unwrap());
        assert_eq!((d.width, d.height), (6, 4));
        assert_eq!(d.color, ::png::ColorType::Grayscale);
        assert_eq!(d.depth, ::png::BitDepth::Eight);
        assert_eq!(&d.data[..6], &[0, 255, 0, 255, 128, 0]);
        // Abdomen window: 40 HU is the level -> 127.5 -> 128; -160 -> 0; 240 -> 255.
        let d = decode(&encode_preview(&hu, Window::ABDOMEN).unwrap());
        assert_eq!(d.data[3 * 6 + 5], 128);
        assert_eq!(d.data[0], 0);
        assert_eq!(d.data[1], 255);
    }

    fn phantom(n: usize, value: f32) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(r, c)| {
            let (y, x) = (r as f32 - n as f32 / 2.0, c as f32 - n as f32 / 2.0);
            if x * x + y * y < (n as f32 / 3.0).powi(2) {
                value
            } else {
                -1000.0
            }
        })
    }

    #[test]
    fn comparison_strip_layout_values_and_labels() {
        for n in [64usize, 256] {
            let input = phantom(n, 60.0);
            let output = phantom(n, 40.0);
            let reference = phantom(n, 40.0);
            let panels = vec![
                Panel::intensity("input", input.clone()),
                Panel::intensity("output", output.clone()),
                Panel::intensity("reference", reference.clone()),
                Panel::difference_of("difference", &input, &reference).unwrap(),
            ];
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cmp.png");
            write_comparison(&path, &panels, Window::ABDOMEN).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                bytes,
                comparison_png_bytes(&panels, Window::ABDOMEN).unwrap()
            );
            let d = decode(&bytes);
            let layout = comparison_layout(&panels).unwrap();
            assert_eq!((d.width, d.height), layout.size());
            assert_eq!(d.width, 4 * n + 3 * SEPARATOR_WIDTH);
            assert_eq!(d.height, n + layout.band_height);
            assert_eq!(d.depth, ::png::BitDepth::Eight);
            assert_eq!(d.color, ::png::ColorType::Grayscale);
            let px = |x: usize, y: usize| d.data[y * d.width + x];
            let band = layout.band_height;
            let (cy, corner) = (band + n / 2, band + 1);
            // Intensity panels: air -> 0; 40 HU -> 128 in the abdomen window; 60 HU -> 140.
            assert_eq!(px(layout.panel_x(0) + n / 2, cy), 140);
            assert_eq!(px(layout.panel_x(1) + n / 2, cy), 128);
            assert_eq!(px(layout.panel_x(2) + 1, corner), 0);
            // Difference panel: 0 -> mid-gray, +20 HU -> 128 + 25.5 = 153.
            assert_eq!(px(layout.panel_x(3) + 1, corner), 128);
            assert_eq!(px(layout.panel_x(3) + n / 2, cy), 153);
            // Separators.
            for i in 1..4 {
                let x = layout.panel_x(i) - 1;
                assert_eq!(px(x, 0), SEPARATOR_VALUE);
                assert_eq!(px(x, d.height - 1), SEPARATOR_VALUE);
            }
            // Each label band holds light text on dark background.
            for i in 0..4 {
                let x0 = layout.panel_x(i);
                let lit = (0..band)
                    .flat_map(|y| (x0..x0 + n).map(move |x| (x, y)))
                    .filter(|&(x, y)| px(x, y) == 255)
                    .count();
                let dark = (0..band)
                    .flat_map(|y| (x0..x0 + n).map(move |x| (x, y)))
                    .filter(|&(x, y)| px(x, y) == 0)
                    .count();
                assert!(lit > 10, "panel {i}: {lit} text pixels");
                assert!(dark > lit, "panel {i}: band should be mostly dark");
                // Band padding rows stay dark.
                assert!((x0..x0 + n).all(|x| px(x, 0) == 0));
            }
            // The first label's first glyph 'i' at the text scale: its dot is lit.
            let s = layout.text_scale();
            assert_eq!(px(LABEL_PAD + 2 * s, LABEL_PAD), 255);
        }
        let p = Panel::difference("diff", Array2::zeros((2, 2)));
        assert_eq!(panel_label(&p, DIFF_HALF_WIDTH), "diff +-100 HU");
    }

    #[test]
    fn comparison_errors() {
        assert!(comparison_png_bytes(&[], Window::FULL).is_err());
        let panels = vec![
            Panel::intensity("a", Array2::zeros((8, 8))),
            Panel::intensity("b", Array2::zeros((8, 9))),
        ];
        assert!(matches!(
            comparison_png_bytes(&panels, Window::FULL),
            Err(ImagingError::SizeMismatch {
                a: (8, 8),
                b: (8, 9)
            })
        ));
        assert!(Panel::difference_of("d", &Array2::zeros((2, 2)), &Array2::zeros((3, 2))).is_err());
        let one = vec![Panel::intensity("a", Array2::zeros((8, 8)))];
        assert!(render_comparison(&one, Window::FULL, 0.0).is_err());
        let img = render_comparison(&one, Window::FULL, 50.0).unwrap();
        assert_eq!(img.width, 8);
        assert_eq!(img.get(0, img.height - 1), 128);
    }
}
