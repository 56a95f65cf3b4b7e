//! Hot loops compiled for the CPU they run on. kiln is built for baseline
//! x86-64 (SSE2), so that one binary runs everywhere; where the CPU has
//! AVX2, [`with_avx2`] runs a loop compiled for it (8 floats a step, and
//! integer maxima SSE2 lacks). The results are the same bytes either way:
//! the compiler does not reorder floating-point arithmetic or fuse it into
//! FMA for wider registers.

/// `f()`, compiled with AVX2 enabled where the CPU has it. Whatever `f`
/// inlines (mark its helpers `#[inline(always)]`) is vectorised for it.
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { run(f) };
    }
    f()
}

/// The largest magnitude among `values` as its bit pattern (sign cleared):
/// at or above `f32::INFINITY.to_bits()` when one is NaN or infinite.
/// Magnitudes of floats order as their bit patterns do, so this is an
/// integer maximum, which the compiler vectorises (`is_finite` in `all`
/// stops at each value and is not).
pub fn peak_bits(values: &[f32]) -> u32 {
    with_avx2(
        #[inline(always)]
        || {
            values
                .chunks(256)
                .map(|c| c.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)))
                .max()
                .unwrap_or(0)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_bits_is_the_largest_magnitude_and_sees_nan_and_infinity() {
        let mut values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 2001) as f32 - 1000.5)
            .collect();
        assert_eq!(f32::from_bits(peak_bits(&values)), 1000.5);
        assert_eq!(peak_bits(&[]), 0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            values[617] = bad;
            assert!(peak_bits(&values) >= f32::INFINITY.to_bits(), "{bad}");
        }
    }
}
