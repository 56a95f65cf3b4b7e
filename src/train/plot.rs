//! `plot.png` at the end of training: the loss (top panel, blue) and the
//! learning rate (bottom panel, orange) against the step, each scaled to
//! its panel between its own minimum and maximum, on a grid of tenths.
//! The picture has no text: the values are in `metrics.jsonl`.

use std::path::Path;

use image::{Rgb, RgbImage};

const W: u32 = 800;
const PANEL: u32 = 280;
const MARGIN: u32 = 20;

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
    // Bresenham.
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// One panel of `values` with its top edge at `top`.
fn panel(img: &mut RgbImage, top: u32, values: &[f64], color: Rgb<u8>) {
    let (left, right) = (MARGIN as i64, (W - MARGIN) as i64);
    let (y_top, y_bottom) = (top as i64, (top + PANEL) as i64);
    let grid = Rgb([225, 225, 225]);
    for i in 0..=10 {
        let x = left + (right - left) * i / 10;
        let y = y_top + (y_bottom - y_top) * i / 10;
        line(img, (x, y_top), (x, y_bottom), grid);
        line(img, (left, y), (right, y), grid);
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.len() < 2 || finite.is_empty() {
        return;
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let at = |i: usize, v: f64| {
        let x = left + ((right - left) as f64 * i as f64 / (values.len() - 1) as f64) as i64;
        let y = y_bottom - ((y_bottom - y_top) as f64 * (v - lo) / span) as i64;
        (x, y)
    };
    for i in 1..values.len() {
        if values[i - 1].is_finite() && values[i].is_finite() {
            line(img, at(i - 1, values[i - 1]), at(i, values[i]), color);
        }
    }
}

/// Write the loss and learning-rate curves to `path`.
pub fn write(path: &Path, loss: &[f64], lr: &[f64]) -> image::ImageResult<()> {
    let h = 2 * PANEL + 3 * MARGIN;
    let mut img = RgbImage::from_pixel(W, h, Rgb([255, 255, 255]));
    panel(&mut img, MARGIN, loss, Rgb([31, 119, 180]));
    panel(&mut img, 2 * MARGIN + PANEL, lr, Rgb([255, 127, 14]));
    img.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_drawn_in_their_panels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plot.png");
        let loss: Vec<f64> = (0..100).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let lr: Vec<f64> = (0..100).map(|i| (i as f64 / 10.0).min(1.0)).collect();
        write(&p, &loss, &lr).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let count = |c: [u8; 3], rows: std::ops::Range<u32>| {
            rows.flat_map(|y| (0..W).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == c)
                .count()
        };
        // The loss only in the top panel, the rate only in the bottom one.
        assert!(count([31, 119, 180], 0..MARGIN + PANEL + 1) > 500);
        assert_eq!(count([31, 119, 180], MARGIN + PANEL + 1..img.height()), 0);
        assert!(count([255, 127, 14], 2 * MARGIN + PANEL..img.height()) > 500);
        // The loss starts high (top left) and ends low (bottom right).
        assert_eq!(img.get_pixel(MARGIN, MARGIN).0, [31, 119, 180]);
        assert_eq!(img.get_pixel(W - MARGIN, MARGIN + PANEL).0, [31, 119, 180]);
    }
}
