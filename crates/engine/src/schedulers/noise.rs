//! Initial noise from a seed, generated on the CPU so that a seed gives the
//! same image on every machine and device.
//!
//! The RNG is ChaCha8 (`rand_chacha`) seeded with the 64-bit seed; normal
//! samples come from the Box–Muller transform, two per pair of uniforms, in
//! row-major (batch, channel, height, width) order. This is documented here
//! because changing it changes every user's images for a given seed.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The noise an ancestral sampler adds at `step` (0-based) of an image
/// made from `seed`: ChaCha8 as above, seeded with the image seed mixed
/// with the step number (splitmix64), so every step draws fresh noise and
/// the whole run still follows from the seed.
pub fn step_gaussian(seed: u64, step: usize, count: usize) -> Vec<f32> {
    let mut z = seed ^ ((step as u64 + 1) << 48) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    gaussian(z ^ (z >> 31), count)
}

pub fn gaussian(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Uniform in (0, 1]: never 0, so the logarithm is finite.
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_noise_is_fresh_per_step_and_fixed_by_the_seed() {
        let a = step_gaussian(7, 0, 64);
        assert_eq!(a, step_gaussian(7, 0, 64));
        assert_ne!(a, step_gaussian(7, 1, 64));
        assert_ne!(a, step_gaussian(8, 0, 64));
        assert_ne!(a, gaussian(7, 64), "not the initial latents again");
    }

    #[test]
    fn same_seed_same_noise_and_roughly_standard_normal() {
        let a = gaussian(42, 100_001);
        assert_eq!(a, gaussian(42, 100_001));
        assert_ne!(a[..16], gaussian(43, 16)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
