//! Initial noise from a seed, generated on the CPU so that a seed gives the
//! same image on every machine and device.
//!
//! The RNG is ChaCha8 (`rand_chacha`) seeded with the 64-bit seed; normal
//! samples come from the Box–Muller transform, two per pair of uniforms, in
//! row-major (batch, channel, height, width) order. This is documented here
//! because changing it changes every user's images for a given seed.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

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
