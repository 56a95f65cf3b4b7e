//! CutMix and MixUp as timm's `Mixup` draws them: the parameters, the
//! drawing of one mixing (lambda from `Beta(alpha, alpha)`, CutMix or MixUp,
//! the CutMix box), the mixing of pixels and the mixed, smoothed one-hot
//! target. The offline `mix` stage and the trainer's online mixing share
//! all of it, so the same parameters mix the same way in both.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

/// timm `Mixup`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    /// Box size as fractions of the image (`[min, max]`); overrides `cutmix_alpha`.
    pub cutmix_minmax: Option<[f64; 2]>,
    /// Probability that a copy (or a batch) is mixed at all.
    pub prob: f64,
    /// Probability of CutMix instead of MixUp when both are on.
    pub switch_prob: f64,
    /// Recompute lambda from the clipped CutMix box.
    pub correct_lam: bool,
    pub label_smoothing: f64,
}

/// How one copy is mixed.
#[derive(Debug, Clone, PartialEq)]
pub enum Mixing {
    None,
    MixUp {
        lam: f64,
    },
    /// `lam` after correction; box `[y0, y1, x0, x1]`, end exclusive.
    CutMix {
        lam: f64,
        bbox: [u32; 4],
    },
}

impl Mixing {
    pub fn lam(&self) -> f64 {
        match self {
            Mixing::None => 1.0,
            Mixing::MixUp { lam } | Mixing::CutMix { lam, .. } => *lam,
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Mixing::None => "none",
            Mixing::MixUp { .. } => "mixup",
            Mixing::CutMix { .. } => "cutmix",
        }
    }
}

impl MixParams {
    /// The parameters' ranges, as (key, message): the offline stage and the
    /// trainer's online mixing check the same ones.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        check_params(self)
    }
}

fn check_params(cfg: &MixParams) -> std::result::Result<(), (String, String)> {
    let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
    for (k, a) in [
        ("mixup_alpha", cfg.mixup_alpha),
        ("cutmix_alpha", cfg.cutmix_alpha),
    ] {
        if !a.is_finite() || a < 0.0 {
            return err(k, "alphas must be finite and not negative");
        }
    }
    if cfg.mixup_alpha == 0.0 && cfg.cutmix_alpha == 0.0 && cfg.cutmix_minmax.is_none() {
        return err(
            "mixup_alpha",
            "set mixup_alpha, cutmix_alpha or cutmix_minmax",
        );
    }
    if !(0.0..=1.0).contains(&cfg.prob) {
        return err("prob", "prob must be within [0, 1]");
    }
    if !(0.0..=1.0).contains(&cfg.switch_prob) {
        return err("switch_prob", "switch_prob must be within [0, 1]");
    }
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return err("label_smoothing", "label_smoothing must be within [0, 1)");
    }
    if let Some([lo, hi]) = cfg.cutmix_minmax
        && !(0.0 < lo && lo < hi && hi <= 1.0)
    {
        return err(
            "cutmix_minmax",
            "cutmix_minmax must be [min, max] with 0 < min < max <= 1",
        );
    }
    Ok(())
}

/// A mixed sample's mixing, after the decision to mix it: CutMix or MixUp
/// (`switch_prob` when both are on), lambda from `Beta(alpha, alpha)`, and
/// for CutMix the box in a `size` = (width, height) image, as timm's
/// `Mixup` draws them. The offline stage and the trainer's online mixing
/// share it.
pub fn draw_mixing(cfg: &MixParams, size: (u32, u32), rng: &mut ChaCha8Rng) -> Mixing {
    let cutmix = match (cfg.mixup_alpha > 0.0, cutmix_on(cfg)) {
        (true, true) => rng.random::<f64>() < cfg.switch_prob,
        (false, true) => true,
        _ => false,
    };
    let beta = |rng: &mut ChaCha8Rng, a: f64| Beta::new(a, a).expect("alpha > 0").sample(rng);
    let (w, h) = (size.0 as i64, size.1 as i64);
    if !cutmix {
        return Mixing::MixUp {
            lam: beta(rng, cfg.mixup_alpha),
        };
    }
    let (bbox, lam) = match cfg.cutmix_minmax {
        Some([lo, hi]) => {
            let randint = |rng: &mut ChaCha8Rng, a: i64, b: i64| {
                if b > a { rng.random_range(a..b) } else { a }
            };
            let cut_h = randint(rng, (h as f64 * lo) as i64, (h as f64 * hi) as i64);
            let cut_w = randint(rng, (w as f64 * lo) as i64, (w as f64 * hi) as i64);
            let y0 = randint(rng, 0, h - cut_h);
            let x0 = randint(rng, 0, w - cut_w);
            ([y0, y0 + cut_h, x0, x0 + cut_w], None)
        }
        None => {
            let lam = beta(rng, cfg.cutmix_alpha);
            let ratio = (1.0 - lam).sqrt();
            let cut_h = (h as f64 * ratio) as i64;
            let cut_w = (w as f64 * ratio) as i64;
            let cy = rng.random_range(0..h);
            let cx = rng.random_range(0..w);
            let bbox = [
                (cy - cut_h / 2).clamp(0, h),
                (cy + cut_h / 2).clamp(0, h),
                (cx - cut_w / 2).clamp(0, w),
                (cx + cut_w / 2).clamp(0, w),
            ];
            (bbox, Some(lam))
        }
    };
    let area = ((bbox[1] - bbox[0]) * (bbox[3] - bbox[2])) as f64;
    let corrected = 1.0 - area / (w * h) as f64;
    let lam = match lam {
        Some(l) if !cfg.correct_lam => l,
        _ => corrected,
    };
    let bbox = bbox.map(|v| v as u32);
    Mixing::CutMix { lam, bbox }
}

fn cutmix_on(cfg: &MixParams) -> bool {
    cfg.cutmix_alpha > 0.0 || cfg.cutmix_minmax.is_some()
}

/// Mix the pixels of `a` with `b` (both `w` x `h` RGB8).
pub fn mix_pixels(a: &[u8], b: &[u8], w: u32, mixing: &Mixing) -> Vec<u8> {
    match mixing {
        Mixing::None => a.to_vec(),
        Mixing::MixUp { lam } => {
            let (l, m) = (*lam as f32, (1.0 - lam) as f32);
            a.iter()
                .zip(b)
                .map(|(&x, &y)| {
                    (x as f32 * l + y as f32 * m)
                        .round_ties_even()
                        .clamp(0.0, 255.0) as u8
                })
                .collect()
        }
        Mixing::CutMix {
            bbox: [y0, y1, x0, x1],
            ..
        } => {
            let mut out = a.to_vec();
            for y in *y0..*y1 {
                let s = ((y * w + x0) * 3) as usize;
                let e = ((y * w + x1) * 3) as usize;
                out[s..e].copy_from_slice(&b[s..e]);
            }
            out
        }
    }
}

/// The mixed, smoothed one-hot target.
pub fn mixed_target(a: usize, b: usize, lam: f64, classes: usize, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let (off, on) = (off as f32, on as f32);
    let (l, m) = (lam as f32, (1.0 - lam) as f32);
    (0..classes)
        .map(|c| {
            let y1 = if c == a { on } else { off };
            let y2 = if c == b { on } else { off };
            y1 * l + y2 * m
        })
        .collect()
}
