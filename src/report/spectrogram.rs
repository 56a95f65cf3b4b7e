//! A log-mel spectrogram as a picture: one pixel per cell, the highest mel
//! band at the top, drawn inside an SVG with a frequency axis in Hz (each
//! band's centre frequency) and a time axis in seconds (each frame's
//! centre), and a SpecAugment copy's masks and warp outlined and labelled.
//!
//! Colour map and scaling: a cell's value `v` is scaled to
//! `t = (v - lo) / (hi - lo)` clamped to [0, 1], where `hi` is the largest
//! finite value of the spectrogram and `lo` the larger of its smallest
//! finite value and `hi - 80` (the 80 dB range of `power_to_db`'s
//! default `top_db`); a value that is not finite is drawn as `lo`. `t` is
//! coloured by matplotlib's viridis, linearly interpolated between its
//! colours at t = 0, 1/8, ..., 1 ([`VIRIDIS`]), each channel rounded half
//! away from zero.

use std::fmt::Write as _;

use image::{Rgb, RgbImage};

use crate::stages::audio::mel::{MelScale, MelSpectrogramConfig, hz_to_mel, mel_to_hz};

/// matplotlib's viridis at t = 0, 1/8, ..., 1.
pub const VIRIDIS: [[f64; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 82.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 145.0, 140.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// The colour of `t` in [0, 1].
pub fn viridis(t: f64) -> Rgb<u8> {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 8.0;
    let i = (x.floor() as usize).min(7);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    Rgb([0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * f).round() as u8))
}

/// The scale `(lo, hi)` of a spectrogram (see the module docs).
pub fn scale(mel: &[Vec<f32>]) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in mel
        .iter()
        .flatten()
        .map(|&v| v as f64)
        .filter(|v| v.is_finite())
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    (lo.max(hi - 80.0), hi)
}

/// The picture: `frames` wide, `n_mels` high, band 0 at the bottom.
pub fn pixels(mel: &[Vec<f32>]) -> RgbImage {
    let (lo, hi) = scale(mel);
    let n_mels = mel.len() as u32;
    let frames = mel.first().map_or(0, |r| r.len()) as u32;
    let span = if hi > lo { hi - lo } else { 1.0 };
    RgbImage::from_fn(frames.max(1), n_mels.max(1), |x, y| {
        let band = n_mels.saturating_sub(1 + y) as usize;
        let v = mel
            .get(band)
            .and_then(|r| r.get(x as usize))
            .map_or(lo, |&v| v as f64);
        let v = if v.is_finite() { v } else { lo };
        viridis((v - lo) / span)
    })
}

/// How bands and frames map to Hz and seconds.
#[derive(Debug, Clone)]
pub struct Axes {
    pub sample_rate: u32,
    pub hop_length: usize,
    pub n_fft: usize,
    pub center: bool,
    pub fmin: f64,
    pub fmax: f64,
    pub scale: MelScale,
}

impl Axes {
    /// From the pipeline's `mel_spectrogram` stage and the clip's rate.
    pub fn of(cfg: &MelSpectrogramConfig, sample_rate: u32) -> Axes {
        Axes {
            sample_rate,
            hop_length: cfg.hop_length.unwrap_or(cfg.n_fft / 4).max(1),
            n_fft: cfg.n_fft,
            center: cfg.center,
            fmin: cfg.fmin,
            fmax: cfg.fmax.unwrap_or(sample_rate as f64 / 2.0),
            scale: cfg.scale,
        }
    }

    /// The centre frequency of band `i` of `n`, in Hz.
    pub fn band_hz(&self, i: usize, n: usize) -> f64 {
        let (lo, hi) = (
            hz_to_mel(self.fmin, self.scale),
            hz_to_mel(self.fmax, self.scale),
        );
        mel_to_hz(lo + (hi - lo) * (i + 1) as f64 / (n + 1) as f64, self.scale)
    }

    /// The centre of frame `t`, in seconds.
    pub fn frame_s(&self, t: f64) -> f64 {
        let offset = if self.center {
            0.0
        } else {
            self.n_fft as f64 / 2.0
        };
        (t * self.hop_length as f64 + offset) / self.sample_rate as f64
    }
}

/// What a SpecAugment copy drew: `[start, width]` masks and the warp.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub freq_masks: Vec<[u32; 2]>,
    pub time_masks: Vec<[u32; 2]>,
    /// `(anchor, shift)`: output frame `anchor + shift` is input frame
    /// `anchor`.
    pub warp: Option<(u32, i32)>,
}

const LEFT: f64 = 58.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 38.0;

/// The spectrogram as an `<svg class="spec">`: the picture as a PNG
/// `data:` URL, the axes (in Hz and seconds with `axes`, else in bands and
/// frames) and the marks, each outline a `<rect class="mask">` whose
/// `data-kind`, `data-start` and `data-width` say what it covers.
pub fn svg(mel: &[Vec<f32>], axes: Option<&Axes>, marks: &Marks, title: &str) -> String {
    let n_mels = mel.len().max(1);
    let frames = mel.first().map_or(0, |r| r.len()).max(1);
    let png = super::png(&image::DynamicImage::ImageRgb8(pixels(mel)));
    // Cells drawn at least 2 px high, the width between 240 and 720 px.
    let ch = (160.0 / n_mels as f64).max(2.0);
    let cw = (frames as f64 * 3.0).clamp(240.0, 720.0) / frames as f64;
    let (w, h) = (frames as f64 * cw, n_mels as f64 * ch);
    let (sw, sh) = (LEFT + w + 12.0, TOP + h + BOTTOM);
    let mut s = String::new();
    write!(
        s,
        "<svg class=\"spec\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{sw:.0}\" height=\"{sh:.0}\" viewBox=\"0 0 {sw:.0} {sh:.0}\" data-cell-width=\"{cw}\" data-cell-height=\"{ch}\" data-left=\"{LEFT}\" data-top=\"{TOP}\" data-id=\"{}\"><title>{}</title>",
        super::html::escape(title),
        super::html::escape(title)
    )
    .ok();
    write!(
        s,
        "<image x=\"{LEFT}\" y=\"{TOP}\" width=\"{w}\" height=\"{h}\" preserveAspectRatio=\"none\" style=\"image-rendering:pixelated\" href=\"{}\"/>",
        super::html::data_url("image/png", &png)
    )
    .ok();
    let axis = "stroke=\"#333\" stroke-width=\"1\"";
    let text = "font-family=\"sans-serif\" font-size=\"10\" fill=\"#333\"";
    write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" {axis}/>",
        TOP + h
    )
    .ok();
    write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {axis}/>",
        TOP + h,
        LEFT + w,
        TOP + h
    )
    .ok();
    // Frequency ticks: about five bands, bottom to top.
    let ticks = 5.min(n_mels);
    for k in 0..ticks {
        let band = if ticks > 1 {
            k * (n_mels - 1) / (ticks - 1)
        } else {
            0
        };
        let y = TOP + h - (band as f64 + 0.5) * ch;
        let label = match axes {
            Some(a) => format!("{:.0}", a.band_hz(band, n_mels)),
            None => band.to_string(),
        };
        write!(s, "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{LEFT}\" y2=\"{y:.1}\" {axis}/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" {text}>{label}</text>", LEFT - 4.0, LEFT - 6.0, y + 3.0).ok();
    }
    write!(s, "<text transform=\"translate(11,{:.1}) rotate(-90)\" text-anchor=\"middle\" {text}>{}</text>", TOP + h / 2.0, if axes.is_some() { "frequency (Hz)" } else { "mel band" }).ok();
    // Time ticks: about five frames, left to right.
    let ticks = 5.min(frames);
    for k in 0..ticks {
        let frame = if ticks > 1 {
            k * (frames - 1) / (ticks - 1)
        } else {
            0
        };
        let x = LEFT + (frame as f64 + 0.5) * cw;
        let label = match axes {
            Some(a) => format!("{:.2}", a.frame_s(frame as f64)),
            None => frame.to_string(),
        };
        write!(s, "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" {axis}/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" {text}>{label}</text>", TOP + h, TOP + h + 4.0, TOP + h + 15.0).ok();
    }
    write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {text}>{}</text>",
        LEFT + w / 2.0,
        TOP + h + 30.0,
        if axes.is_some() { "time (s)" } else { "frame" }
    )
    .ok();
    let mark = "font-family=\"sans-serif\" font-size=\"10\" font-weight=\"bold\"";
    for (i, m) in marks.freq_masks.iter().enumerate() {
        let [start, width] = *m;
        let y = TOP + h - (start + width) as f64 * ch;
        write!(s, "<rect class=\"mask\" data-kind=\"freq\" data-start=\"{start}\" data-width=\"{width}\" x=\"{LEFT}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{:.2}\" fill=\"none\" stroke=\"#ff2d55\" stroke-width=\"1.5\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#ff2d55\" {mark}>F{}</text>", width as f64 * ch, LEFT + w + 1.0, y + 9.0, i + 1).ok();
    }
    for (i, m) in marks.time_masks.iter().enumerate() {
        let [start, width] = *m;
        let x = LEFT + start as f64 * cw;
        write!(s, "<rect class=\"mask\" data-kind=\"time\" data-start=\"{start}\" data-width=\"{width}\" x=\"{x:.2}\" y=\"{TOP}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"none\" stroke=\"#ffffff\" stroke-width=\"1.5\" stroke-dasharray=\"4 2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#ffffff\" {mark}>T{}</text>", width as f64 * cw, x + 2.0, TOP + 10.0, i + 1).ok();
    }
    if let Some((anchor, shift)) = marks.warp {
        let to = anchor as i64 + shift as i64;
        let x = LEFT + (to as f64 + 0.5) * cw;
        write!(s, "<line class=\"warp\" data-anchor=\"{anchor}\" data-shift=\"{shift}\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#00e5ff\" stroke-width=\"1.5\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#00e5ff\" {mark}>warp {anchor}\u{2192}{to}</text>", TOP + h, x + 2.0, TOP + h - 4.0).ok();
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_midpoints_are_matplotlibs() {
        assert_eq!(viridis(0.0), Rgb([68, 1, 84]));
        assert_eq!(viridis(1.0), Rgb([253, 231, 37]));
        assert_eq!(viridis(0.5), Rgb([33, 145, 140]));
        assert_eq!(viridis(0.0625), Rgb([70, 23, 103]));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    #[test]
    fn the_picture_puts_band_zero_at_the_bottom_and_floors_at_80_db() {
        let mel = vec![vec![0.0f32, -100.0], vec![-40.0, -80.0]];
        let img = pixels(&mel);
        assert_eq!(img.dimensions(), (2, 2));
        assert_eq!(*img.get_pixel(0, 1), viridis(1.0));
        assert_eq!(*img.get_pixel(1, 1), viridis(0.0));
        assert_eq!(*img.get_pixel(0, 0), viridis(0.5));
        assert_eq!(*img.get_pixel(1, 0), viridis(0.0));
    }

    #[test]
    fn slaney_band_centres_and_frame_times() {
        let a = Axes {
            sample_rate: 16000,
            hop_length: 160,
            n_fft: 400,
            center: true,
            fmin: 0.0,
            fmax: 8000.0,
            scale: MelScale::Slaney,
        };
        // Linear below 1 kHz on the Slaney scale: 80 bands, first centre
        // at 1/81 of the way.
        assert!(a.band_hz(0, 80) > 0.0 && a.band_hz(0, 80) < 100.0);
        assert!((a.band_hz(79, 80) - 8000.0).abs() < 400.0);
        assert_eq!(a.frame_s(100.0), 1.0);
    }
}
