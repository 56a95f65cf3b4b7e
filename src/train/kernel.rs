//! The int8 model's integer product: `uint8` inputs (held as `i16` after
//! subtracting their zero point, so in [-255, 255]) times `int8` weights,
//! summed in `i32`, exact whatever the order.
//!
//! The weights are packed once for `vpmaddwd` (AVX2: sixteen `i16`
//! products summed pairwise into eight `i32` lanes an instruction, twice
//! the multiply-adds of an fp32 FMA): in blocks of eight output channels,
//! each input pair's two weights side by side. On an AVX2 CPU (checked at
//! run time) the product runs that way; elsewhere a portable loop over the
//! same layout gives the same integers.

/// Weights `[out][k]` packed as `[out / 8][k / 2][8 channels x 2]` (zeros
/// past the ends).
#[derive(Debug, Clone)]
pub struct Packed {
    data: Vec<i16>,
    k: usize,
    out: usize,
}

impl Packed {
    pub fn new(w: &[i8], out: usize) -> Packed {
        let k = w.len() / out.max(1);
        let pairs = k.div_ceil(2);
        let blocks = out.div_ceil(8);
        let mut data = vec![0i16; blocks * pairs * 16];
        for o in 0..out {
            for j in 0..k {
                data[((o / 8) * pairs + j / 2) * 16 + (o % 8) * 2 + j % 2] = w[o * k + j] as i16;
            }
        }
        Packed { data, k, out }
    }

    /// `acc[r][o] = sum_j x[r][j] * w[o][j]` for the rows of `x` (`k`
    /// values each).
    pub fn product(&self, x: &[i16], acc: &mut [i32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { self.product_avx2(x, acc) };
            return;
        }
        self.product_portable(x, acc)
    }

    fn product_portable(&self, x: &[i16], acc: &mut [i32]) {
        let (k, out, pairs) = (self.k, self.out, self.k.div_ceil(2));
        for (xr, ar) in x.chunks_exact(k).zip(acc.chunks_exact_mut(out)) {
            for (o, a) in ar.iter_mut().enumerate() {
                let (b, l) = (o / 8, o % 8);
                let mut sum = 0i32;
                for p in 0..pairs {
                    let w = &self.data[(b * pairs + p) * 16 + l * 2..];
                    sum += xr[2 * p] as i32 * w[0] as i32;
                    if 2 * p + 1 < k {
                        sum += xr[2 * p + 1] as i32 * w[1] as i32;
                    }
                }
                *a = sum;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn product_avx2(&self, x: &[i16], acc: &mut [i32]) {
        use std::arch::x86_64::*;
        let (k, out, pairs) = (self.k, self.out, self.k.div_ceil(2));
        let blocks = out.div_ceil(8);
        let mut lanes = vec![0i32; blocks * 8];
        for (xr, ar) in x.chunks_exact(k).zip(acc.chunks_exact_mut(out)) {
            let mut b = 0;
            while b < blocks {
                let n = (blocks - b).min(4);
                let mut sums = [_mm256_setzero_si256(); 4];
                for p in 0..pairs {
                    let lo = xr[2 * p] as u16 as u32;
                    let hi = match 2 * p + 1 < k {
                        true => xr[2 * p + 1] as u16 as u32,
                        false => 0,
                    };
                    let xv = _mm256_set1_epi32((lo | (hi << 16)) as i32);
                    for (j, s) in sums.iter_mut().enumerate().take(n) {
                        let at = ((b + j) * pairs + p) * 16;
                        debug_assert!(at + 16 <= self.data.len());
                        // SAFETY: `at + 16` is within the packed weights.
                        let wv = unsafe {
                            _mm256_loadu_si256(self.data.as_ptr().add(at) as *const __m256i)
                        };
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(xv, wv));
                    }
                }
                for (j, s) in sums.iter().enumerate().take(n) {
                    // SAFETY: lanes holds `blocks * 8` values.
                    unsafe {
                        _mm256_storeu_si256(lanes.as_mut_ptr().add((b + j) * 8) as *mut __m256i, *s)
                    };
                }
                b += n;
            }
            ar.copy_from_slice(&lanes[..out]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_product_is_the_plain_one_on_every_path() {
        for (rows, k, out) in [(5, 64, 64), (3, 7, 13), (1, 1, 1), (9, 48, 3)] {
            let w: Vec<i8> = (0..k * out).map(|i| ((i * 71 + 5) % 255) as i8).collect();
            let x: Vec<i16> = (0..rows * k)
                .map(|i| ((i * 37) % 511) as i16 - 255)
                .collect();
            let p = Packed::new(&w, out);
            let mut want = vec![0i32; rows * out];
            for r in 0..rows {
                for o in 0..out {
                    want[r * out + o] = (0..k)
                        .map(|j| x[r * k + j] as i32 * w[o * k + j] as i32)
                        .sum();
                }
            }
            let mut a = vec![0i32; rows * out];
            p.product(&x, &mut a);
            assert_eq!(a, want, "{rows}x{k}x{out}");
            let mut b = vec![0i32; rows * out];
            p.product_portable(&x, &mut b);
            assert_eq!(b, want, "{rows}x{k}x{out}, portable");
        }
    }
}
