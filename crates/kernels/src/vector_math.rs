//! Elementary functions in plain arithmetic that the compiler vectorises,
//! and `vectorised_fn!`, which compiles a loop for the widest vector unit
//! the CPU has.
//!
//! libm's `expf`/`erff`/`tanhf` are scalar calls: a loop over them runs one
//! element at a time. These are branch-free polynomial forms accurate to a
//! few f32 ulps, written so a loop over a slice becomes SIMD code.

/// Defines `fn NAME(args)` that runs its body compiled for AVX-512 or
/// AVX2 + FMA when the CPU has them, and for the baseline otherwise.
///
/// The binary's baseline is plain x86-64: an ordinary loop gets SSE2 only,
/// and `mul_add` without FMA hardware is a slow exact libm call. A closure
/// handed to a `#[target_feature]` function is not reliably inlined into
/// it (measured: it stayed a baseline copy calling `fmaf`), so the body
/// is pasted into each copy instead.
macro_rules! vectorised_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            /// # Safety
            /// The CPU must have AVX-512F.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            /// # Safety
            /// The CPU must have AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use vectorised_fn;

/// e^x for x ≤ 0 (and small positive x); 0 below e^-87.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding and removing 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two (Cody–Waite), so x − n·ln 2 loses no bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.0;
    let x = if underflow { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // e^r by Taylor to degree 6: |error| < 2e-7 for |r| ≤ ln 2 / 2.
    let p = (1.0f32 / 720.0).mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // n sits in the low mantissa bits of `shifted` (offset by ROUND's):
    // reading it from there keeps the loop in vector registers, where
    // `n as i32` (a saturating conversion) would be done lane by lane.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if underflow {
        0.0
    } else {
        p * scale
    }
}

/// 1 / (1 + e^-x), from e^-|x| so that neither tail overflows or cancels.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let inverse = 1.0 / (1.0 + e);
    if x >= 0.0 {
        inverse
    } else {
        e * inverse
    }
}

/// Φ(x) = ½·erfc(−x/√2), from erfc's Chebyshev fit in Numerical Recipes
/// (§6.2, `erfcc`): fractional error under 1.2e-7 for every argument, so
/// both tails keep their relative precision (GELU of a large negative input
/// is a tiny number, not zero).
#[inline(always)]
pub(crate) fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / 0.5f32.mul_add(z, 1.0);
    let p = 0.170_872_77f32.mul_add(t, -0.822_152_23);
    let p = p.mul_add(t, 1.488_515_9);
    let p = p.mul_add(t, -1.135_204);
    let p = p.mul_add(t, 0.278_868_07);
    let p = p.mul_add(t, -0.186_288_06);
    let p = p.mul_add(t, 0.096_784_18);
    let p = p.mul_add(t, 0.374_091_96);
    let p = p.mul_add(t, 1.000_023_7);
    let p = p.mul_add(t, -1.265_512_2);
    // ½·erfc(|x|/√2): Φ of −|x|.
    let lower = 0.5 * t * exp((-z).mul_add(z, p));
    if x >= 0.0 {
        1.0 - lower
    } else {
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_is_accurate_over_the_range_softmax_uses() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -86.9 * i as f32 / 200_000.0;
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn sigmoid_keeps_relative_precision_in_both_tails() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = (-80.0 + 160.0 * i as f64 / 200_000.0) as f32;
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            worst = worst.max((sigmoid(x) as f64 - exact).abs() / exact);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn normal_cdf_keeps_relative_precision_in_both_tails() {
        // The fit (1.2e-7), the exponential (2e-7) and f32 rounding; in the
        // lower tail Φ ≈ e^(−x²/2), so rounding x²/2 alone costs a relative
        // x²/2·6e-8: the bound grows with x² there.
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = (-12.0 + 24.0 * i as f64 / 400_000.0) as f32;
            let exact = 0.5 * erfc(-(x as f64) / std::f64::consts::SQRT_2);
            let ours = normal_cdf(x) as f64;
            let scale = 1.0 + (x as f64).powi(2);
            worst = worst.max((ours - exact).abs() / exact / scale);
        }
        assert!(worst < 1e-6, "worst relative error / (1 + x²): {worst}");
    }

    /// erfc in f64, independent of the fit under test: erf's Maclaurin
    /// series below 2, Lentz's continued fraction above.
    fn erfc(x: f64) -> f64 {
        if x < 0.0 {
            return 2.0 - erfc(-x);
        }
        if x < 2.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            return 1.0 - sum * 2.0 / std::f64::consts::PI.sqrt();
        }
        let mut f = 0.0;
        for k in (1..200).rev() {
            f = (k as f64 / 2.0) / (x + f);
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
    }
}
