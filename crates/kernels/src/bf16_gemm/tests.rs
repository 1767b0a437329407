//! The bf16 kernels against the scalar rounding, their packing paths
//! against each other, and their products against an f64 reference: each
//! test runs every kernel this CPU has, and says which it skipped.

use super::*;

/// The kernels to test here, with a visible skip for those this CPU lacks.
fn kernels() -> Vec<Kernel> {
    if !Kernel::Amx.usable() {
        cyberimage_testkit::skipped("AMX kernel: this CPU has no AMX-BF16 (or no tile state)");
    }
    Kernel::all_usable()
}

fn rounded(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

#[test]
fn rounds_to_nearest_even() {
    assert_eq!(rounded(1.0), 1.0);
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even (1).
    assert_eq!(rounded(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(rounded(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert!(rounded(f32::NAN).is_nan());
}

#[test]
fn vector_packing_rounds_as_the_scalar_one() {
    if !available() {
        return cyberimage_testkit::skipped("this CPU has no AVX-512 BF16");
    }
    // Ties both ways, values just off a tie, signs, magnitudes, an
    // infinity and a NaN: the hardware rounding must match pair().
    let specials = [
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        1.0 + 1.0 / 256.0 + 1e-7,
        3.4e38,
        f32::INFINITY,
        f32::NAN,
        1e-30,
    ];
    let lo: Vec<f32> = (0..NR)
        .map(|i| {
            specials
                .get(i)
                .copied()
                .unwrap_or((i as f32 - 13.7) * 0.377)
        })
        .collect();
    let hi: Vec<f32> = (0..NR).map(|i| (i as f32 * 1.93).sin() * 1e3).collect();
    let mut vector = vec![0u32; NR];
    pack_pair_rows(&lo, &hi, &mut vector);
    for j in 0..NR {
        let scalar = pair(lo[j], hi[j]);
        if lo[j].is_nan() {
            assert_eq!(vector[j] >> 16, scalar >> 16, "high half at {j}");
            assert!(f32::from_bits(vector[j] << 16).is_nan());
        } else {
            assert_eq!(vector[j], scalar, "column {j}: {} / {}", lo[j], hi[j]);
        }
    }
}

#[test]
fn a_right_operand_given_row_by_row_gives_the_same_product() {
    if !available() {
        return cyberimage_testkit::skipped("this CPU has no AVX-512 BF16");
    }
    // Odd k (a last pair with no second row), two k blocks, a ragged
    // last panel.
    let (m, k, n) = (13, 2 * KC + 37, 70);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 29 % 89) as f32 - 44.0) / 44.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 41 % 83) as f32 - 41.0) / 41.0)
        .collect();
    for kernel in kernels() {
        let packed = PackedA::new_for(kernel, &a, m, k, k);
        let (mut whole, mut by_rows) = (vec![1f32; m * n], vec![1f32; m * n]);
        let mut asked = Vec::new();
        gemm(
            &packed,
            &b,
            n,
            n,
            OutBlock::of_slice(&mut whole, m, n, n),
            true,
        );
        gemm_rows(
            &packed,
            n,
            |r, out| {
                asked.push(r);
                out.copy_from_slice(&b[r * n..(r + 1) * n]);
            },
            OutBlock::of_slice(&mut by_rows, m, n, n),
            true,
        );
        assert_eq!(asked, (0..k).collect::<Vec<_>>());
        assert_eq!(whole, by_rows, "{kernel:?}");
    }
}

#[test]
fn a_transposed_right_operand_gives_the_same_product() {
    if !available() {
        return cyberimage_testkit::skipped("this CPU has no AVX-512 BF16");
    }
    // One k-block of pairs, and three.
    for kernel in kernels() {
        for (m, k, n) in [(30, 77, 41), (30, 601, 41)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let bt: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let b: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let (mut via_a, mut via_b) = (vec![0f32; m * n], vec![0f32; m * n]);
            gemm(
                &PackedA::new_for(kernel, &a, m, k, k),
                &b,
                n,
                n,
                OutBlock::of_slice(&mut via_a, m, n, n),
                false,
            );
            gemm_packed_b(
                &a,
                m,
                k,
                &PackedB::from_transposed_for(kernel, &bt, n, k),
                OutBlock::of_slice(&mut via_b, m, n, n),
                false,
            );
            assert_eq!(via_a, via_b, "{kernel:?}, k = {k}");
        }
    }
}

/// The kernel against an f64 product of the same bf16-rounded operands:
/// only the f32 summation differs. Ragged m, n and odd k; accumulation.
#[test]
fn matches_a_reference_product_of_the_rounded_operands() {
    if !available() {
        return cyberimage_testkit::skipped("this CPU has no AVX-512 BF16");
    }
    let mut seed = 1u64;
    let mut random = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    // Whole AMX blocks (32 × 32, k a multiple of 32) and ragged ones.
    let shapes = [
        (12, 256, 32),
        (29, 301, 45),
        (5, 3, 7),
        (40, 1000, 70),
        (64, 512, 64),
        (33, 40, 97),
    ];
    for kernel in kernels() {
        for (m, k, n) in shapes {
            let a: Vec<f32> = (0..m * k).map(|_| random()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| random()).collect();
            let start: Vec<f32> = (0..m * n).map(|_| random()).collect();
            let packed = PackedA::new_for(kernel, &a, m, k, k);
            for accumulate in [false, true] {
                let mut c = start.clone();
                gemm(
                    &packed,
                    &b,
                    n,
                    n,
                    OutBlock::of_slice(&mut c, m, n, n),
                    accumulate,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut exact: f64 = if accumulate {
                            start[i * n + j] as f64
                        } else {
                            0.0
                        };
                        for p in 0..k {
                            exact += rounded(a[i * k + p]) as f64 * rounded(b[p * n + j]) as f64;
                        }
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - exact).abs() < 1e-4 * (k as f64).sqrt(),
                            "{kernel:?} ({m},{k},{n}) at {i},{j}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn operands_packed_for_different_kernels_are_refused() {
    if !Kernel::Amx.usable() {
        return cyberimage_testkit::skipped("this CPU has no AMX-BF16: one kernel only");
    }
    let a = PackedA::new_for(Kernel::Avx512, &[1.0; 4], 2, 2, 2);
    let b = PackedB::from_transposed_for(Kernel::Amx, &[1.0; 4], 2, 2);
    let mut c = [0f32; 4];
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gemm_prepacked(&a, &b, OutBlock::of_slice(&mut c, 2, 2, 2), false)
    }));
    assert!(refused.is_err());
}

#[test]
fn the_bare_tile_product_counts_its_multiply_adds() {
    match amx_peak_multiply_adds(10) {
        Some(count) => assert_eq!(count, 10 * 4 * 16 * 16 * 32),
        None => cyberimage_testkit::skipped("this CPU has no AMX-BF16"),
    }
}

#[test]
fn transposes_16_by_16_blocks() {
    // A block inside a wider matrix (stride 20), as f32 and as u32.
    let src: Vec<f32> = (0..16 * 20).map(|i| i as f32 * 0.5 - 7.0).collect();
    let mut out = [[0f32; 16]; 16];
    transpose_16x16(&src, 20, &mut out);
    for (j, row) in out.iter().enumerate() {
        for (i, &value) in row.iter().enumerate() {
            assert_eq!(value, src[i * 20 + j], "({i}, {j})");
        }
    }
    let bits: Vec<u32> = src.iter().map(|v| v.to_bits()).collect();
    let mut out_bits = [[0u32; 16]; 16];
    transpose_16x16(&bits[3..], 20, &mut out_bits);
    for (j, row) in out_bits.iter().enumerate() {
        for (i, &value) in row.iter().enumerate() {
            assert_eq!(value, bits[3 + i * 20 + j], "({i}, {j})");
        }
    }
}
