//! The loss-curve PNG of a run: one panel per column of `metrics.csv` (losses,
//! learning rate, validation figures) against the step, drawn in grayscale with the
//! imaging crate's bitmap font. No plotting dependency.

use std::path::Path;

use ldct_imaging::font::{draw_text, text_height};
use ldct_imaging::png::GrayImage;

const PANEL_W: usize = 520;
const PANEL_H: usize = 150;
const MARGIN: usize = 8;
const COLUMNS: usize = 2;

/// One series: a name and `(step, value)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Series from a CSV whose first columns are `epoch,step` (as `metrics.csv`).
pub fn series_from_csv(text: &str) -> Vec<Series> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return vec![];
    };
    let names: Vec<&str> = header.split(',').collect();
    let Some(step_col) = names.iter().position(|n| *n == "step") else {
        return vec![];
    };
    let mut series: Vec<Series> = names
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != step_col && !matches!(**n, "epoch" | "elapsed_s"))
        .map(|(_, n)| Series {
            name: n.to_string(),
            points: vec![],
        })
        .collect();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let Some(step) = cells.get(step_col).and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        for s in series.iter_mut() {
            let Some(i) = names.iter().position(|n| *n == s.name) else {
                continue;
            };
            if let Some(v) = cells.get(i).and_then(|c| c.parse::<f64>().ok()) {
                if v.is_finite() {
                    s.points.push((step, v));
                }
            }
        }
    }
    series.retain(|s| !s.points.is_empty());
    series
}

/// Draws the panels (two columns) into a grayscale image.
pub fn render(series: &[Series]) -> GrayImage {
    let rows = series.len().div_ceil(COLUMNS).max(1);
    let width = COLUMNS * PANEL_W;
    let height = rows * PANEL_H;
    let mut img = GrayImage {
        width,
        height,
        pixels: vec![255; width * height],
    };
    for (k, s) in series.iter().enumerate() {
        let (px, py) = ((k % COLUMNS) * PANEL_W, (k / COLUMNS) * PANEL_H);
        draw_panel(&mut img, px, py, s);
    }
    img
}

fn draw_panel(img: &mut GrayImage, px: usize, py: usize, s: &Series) {
    let th = text_height(1);
    let (x0, y0) = (px + MARGIN + 50, py + MARGIN + th + 4);
    let (x1, y1) = (px + PANEL_W - MARGIN, py + PANEL_H - MARGIN - th - 2);
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &s.points {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    if ymax <= ymin {
        let pad = ymin.abs().max(1e-6) * 0.05;
        ymin -= pad;
        ymax += pad;
    }
    let w = img.width;
    draw_text(&mut img.pixels, w, px + MARGIN, py + MARGIN, &s.name, 1, 0);
    draw_text(&mut img.pixels, w, px + MARGIN, y0, &fmt_num(ymax), 1, 90);
    draw_text(
        &mut img.pixels,
        w,
        px + MARGIN,
        y1 - th,
        &fmt_num(ymin),
        1,
        90,
    );
    draw_text(
        &mut img.pixels,
        w,
        x0,
        y1 + 3,
        &format!("step {}", xmin as u64),
        1,
        90,
    );
    let end = format!("{}", xmax as u64);
    draw_text(
        &mut img.pixels,
        w,
        x1.saturating_sub(6 * end.len()),
        y1 + 3,
        &end,
        1,
        90,
    );
    // Frame.
    for x in x0..=x1 {
        set(img, x, y0, 170);
        set(img, x, y1, 170);
    }
    for y in y0..=y1 {
        set(img, x0, y, 170);
        set(img, x1, y, 170);
    }
    let map = |x: f64, y: f64| {
        let fx = x0 as f64 + (x - xmin) / (xmax - xmin) * (x1 - x0) as f64;
        let fy = y1 as f64 - (y - ymin) / (ymax - ymin) * (y1 - y0) as f64;
        (fx, fy)
    };
    let mut prev: Option<(f64, f64)> = None;
    for &(x, y) in &s.points {
        let p = map(x, y);
        match prev {
            Some(q) => line(img, q, p),
            None => set(img, p.0.round() as usize, p.1.round() as usize, 0),
        }
        prev = Some(p);
    }
}

fn fmt_num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

fn set(img: &mut GrayImage, x: usize, y: usize, v: u8) {
    if x < img.width && y < img.height {
        img.pixels[y * img.width + x] = v;
    }
}

fn line(img: &mut GrayImage, a: (f64, f64), b: (f64, f64)) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        set(img, x.round() as usize, y.round() as usize, 0);
    }
}

/// Renders `metrics.csv` as `loss.png`.
pub fn write_loss_png(csv: &Path, png: &Path) -> Result<(), ldct_imaging::ImagingError> {
    let text = std::fs::read_to_string(csv).map_err(|e| ldct_imaging::ImagingError::io(csv, e))?;
    let img = render(&series_from_csv(&text));
    let bytes = img.encode()?;
    std::fs::write(png, bytes).map_err(|e| ldct_imaging::ImagingError::io(png, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_for_each_column_with_ink() {
        let csv = "epoch,step,lr,loss,val_psnr,elapsed_s\n1,10,0.001,0.5,30,1\n2,20,0.001,0.3,31,2\n3,30,0.0005,0.2,32.5,3\n";
        let s = series_from_csv(csv);
        assert_eq!(
            s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["lr", "loss", "val_psnr"]
        );
        assert_eq!(s[1].points, vec![(10.0, 0.5), (20.0, 0.3), (30.0, 0.2)]);
        let img = render(&s);
        assert_eq!((img.width, img.height), (2 * PANEL_W, 2 * PANEL_H));
        assert!(img.pixels.iter().filter(|&&p| p == 0).count() > 300);
    }
}
