//! The learning-rate schedule: linear warmup to `lr_max` over
//! `warmup_steps`, then cosine annealing to `lr_min` over the remaining
//! steps, `lr_t = lr_min + 0.5 (lr_max - lr_min)(1 + cos(pi t / T))` with
//! `t` the steps since warmup and `T` the steps after it; `lr_min` after
//! the last step.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub lr_max: f64,
    pub lr_min: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl WarmupCosine {
    /// The rate of optimiser step `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            // (step + 1) / warmup: the first step already learns.
            return self.lr_max * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = (step - self.warmup_steps) as f64;
        let total = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        if t >= total {
            return self.lr_min;
        }
        self.lr_min
            + 0.5 * (self.lr_max - self.lr_min) * (1.0 + (std::f64::consts::PI * t / total).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_values() {
        let s = WarmupCosine {
            lr_max: 1e-3,
            lr_min: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        // Linear warmup: 1/10, 2/10, ... of lr_max.
        assert!(close(s.lr(0), 1e-4));
        assert!(close(s.lr(4), 5e-4));
        assert!(close(s.lr(9), 1e-3));
        // Cosine: lr_max at its start, the midpoint halfway, lr_min at the end.
        assert!(close(s.lr(10), 1e-3));
        assert!(close(s.lr(60), 1e-5 + 0.5 * (1e-3 - 1e-5)));
        let quarter = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + (std::f64::consts::PI / 4.0).cos());
        assert!(close(s.lr(35), quarter));
        assert!(close(s.lr(110), 1e-5));
        assert!(close(s.lr(500), 1e-5));
        // Never rising after warmup.
        for step in 10..110 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }
}
