//! How much memory a model takes once loaded, and the engine options that
//! bound it: a memory budget checked before loading (so an oversized model
//! fails with its numbers instead of being killed by the OS halfway), and
//! dropping the text encoders after each job's prompt is encoded (the peak
//! becomes the larger of the encoders and the denoiser, not their sum —
//! T5-XXL alone is 19 GB in f32).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::weights::files::safetensors_in;
use crate::weights::single_file::{component_f32_bytes, pointer};

/// The `[engine]` section of the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineOptions {
    /// `cpu`, or `cuda` / `cuda:N` for a binary built with the `cuda`
    /// feature.
    pub device: String,
    /// Largest resident size a model may need, in GiB. Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_gib: Option<f64>,
    /// Encode each job's prompt with only the text encoders resident (the
    /// denoiser is freed first and loaded again after), then free them:
    /// slower per job, but the peak is the larger side, not the sum.
    pub drop_text_encoders: bool,
    /// Scheduling niceness of the engine's threads (Linux, 0–19): above
    /// the server's 0, status polls and uploads are answered promptly while
    /// a generation runs; the engine still gets every idle cycle.
    pub nice: i32,
    /// Run the engine's threads under Linux's `SCHED_IDLE` instead of
    /// niced: the server answers faster under load, but any other busy
    /// process on the machine stalls generations.
    pub idle_priority: bool,
    /// `f32`, or `bf16`: convolutions, the UNet's and VAE's linear layers
    /// and attention products multiply bf16-rounded operands with f32 sums
    /// (AVX-512 BF16 CPUs; about twice the multiply rate, results within
    /// about 1 % of f32's). Parity with diffusers holds for f32.
    pub precision: Precision,
    /// Which kernel runs bf16 products: `auto` (Intel AMX tiles where the
    /// CPU has them and Linux grants them, else AVX-512 BF16), `amx`, or
    /// `avx512` (to compare them on one CPU).
    pub bf16_kernel: Bf16Kernel,
}

/// The `[engine] bf16_kernel` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bf16Kernel {
    #[default]
    Auto,
    Amx,
    Avx512,
}

impl Bf16Kernel {
    pub(crate) fn preference(self) -> cyberimage_kernels::bf16_gemm::Preference {
        use cyberimage_kernels::bf16_gemm::Preference;
        match self {
            Bf16Kernel::Auto => Preference::Auto,
            Bf16Kernel::Amx => Preference::Amx,
            Bf16Kernel::Avx512 => Preference::Avx512,
        }
    }
}

/// How the engine's CPU kernels multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// What a generated image's metadata says about its arithmetic.
    pub fn describe(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "f32 with bf16 matrix products",
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            memory_budget_gib: None,
            drop_text_encoders: false,
            nice: 10,
            idle_priority: false,
            precision: Precision::F32,
            bf16_kernel: Bf16Kernel::Auto,
        }
    }
}

impl EngineOptions {
    /// How low the engine's threads run.
    pub fn thread_priority(&self) -> cyberimage_kernels::priority::ThreadPriority {
        if self.idle_priority {
            cyberimage_kernels::priority::ThreadPriority::Idle
        } else {
            cyberimage_kernels::priority::ThreadPriority::Nice(self.nice)
        }
    }

    /// The device named by `device`. CUDA needs a binary built with
    /// `--features cuda` (candle's CUDA kernels); otherwise this says so.
    pub fn device(&self) -> Result<candle_core::Device, String> {
        let name = self.device.trim();
        if name == "cpu" {
            return Ok(candle_core::Device::Cpu);
        }
        let ordinal = match name.strip_prefix("cuda") {
            Some("") => 0,
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("[engine] device {name:?}: expected cpu, cuda or cuda:N"))?,
            None => {
                return Err(format!(
                    "[engine] device {name:?}: expected cpu, cuda or cuda:N"
                ))
            }
        };
        candle_core::Device::new_cuda(ordinal).map_err(|e| {
            format!(
                "[engine] device {name:?} is not available: {e} (CUDA needs a build with \
                 `cargo build --release --features cuda` and an NVIDIA driver)"
            )
        })
    }
}

/// Resident bytes of a diffusers model folder as the engine loads it:
/// safetensors become f32, GGUF stays as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelFootprint {
    pub text_encoders: u64,
    /// Denoiser (UNet or transformer) and VAE.
    pub denoiser_and_vae: u64,
}

impl ModelFootprint {
    pub fn of(dir: &Path) -> std::io::Result<Self> {
        let mut footprint = Self::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let bytes = if name.starts_with("text_encoder") {
                &mut footprint.text_encoders
            } else if matches!(name, "unet" | "transformer" | "vae") {
                &mut footprint.denoiser_and_vae
            } else {
                continue;
            };
            *bytes += folder_footprint(&path)?;
        }
        Ok(footprint)
    }

    /// The peak while a job runs: with dropped encoders only one side is
    /// resident at a time.
    pub fn peak(&self, options: &EngineOptions) -> u64 {
        if options.drop_text_encoders {
            self.text_encoders.max(self.denoiser_and_vae)
        } else {
            self.text_encoders + self.denoiser_and_vae
        }
    }

    /// `Err` with a message when the model's peak exceeds the budget.
    pub fn check(&self, options: &EngineOptions, model: &str) -> Result<(), String> {
        let Some(budget) = options.memory_budget_gib else {
            return Ok(());
        };
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let peak = self.peak(options);
        if gib(peak) <= budget {
            return Ok(());
        }
        let hint = if options.drop_text_encoders {
            "use a GGUF-quantized transformer or raise [engine] memory_budget_gib"
        } else {
            "set [engine] drop_text_encoders = true, use a GGUF-quantized transformer, \
             or raise [engine] memory_budget_gib"
        };
        Err(format!(
            "model {model:?} needs about {:.1} GiB once loaded (text encoders {:.1} GiB, \
             denoiser and VAE {:.1} GiB), over the memory budget of {budget:.1} GiB: {hint}",
            gib(peak),
            gib(self.text_encoders),
            gib(self.denoiser_and_vae),
        ))
    }
}

/// One component folder: a GGUF file counts as stored (it is used instead
/// of any safetensors); safetensors count as f32.
fn folder_footprint(folder: &Path) -> std::io::Result<u64> {
    if let Ok(Some(part)) = pointer(folder) {
        return if part.file.extension().is_some_and(|e| e == "gguf") {
            Ok(std::fs::metadata(&part.file)?.len())
        } else {
            component_f32_bytes(&part)
        };
    }
    let mut gguf = 0;
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            gguf += std::fs::metadata(&path)?.len();
        }
    }
    if gguf > 0 {
        return Ok(gguf);
    }
    let Ok(files) = safetensors_in(folder) else {
        return Ok(0);
    };
    let mut total = 0;
    for file in files {
        total += crate::weights::files::f32_bytes(&file)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_plainly() {
        let named = |device: &str| EngineOptions {
            device: device.into(),
            ..Default::default()
        };
        assert!(named("cpu").device().unwrap().is_cpu());
        assert!(named("gpu")
            .device()
            .unwrap_err()
            .contains("expected cpu, cuda or cuda:N"));
        assert!(named("cuda:x").device().is_err());
        // This machine's build has no CUDA: the message says how to get it.
        if !cfg!(feature = "cuda") {
            assert!(named("cuda:0")
                .device()
                .unwrap_err()
                .contains("--features cuda"));
        }
    }

    #[test]
    fn the_budget_counts_the_peak_that_will_be_resident() {
        let footprint = ModelFootprint {
            text_encoders: 19 << 30,
            denoiser_and_vae: 7 << 30,
        };
        let mut options = EngineOptions {
            memory_budget_gib: Some(24.0),
            ..Default::default()
        };
        let err = footprint.check(&options, "flux-2").unwrap_err();
        assert!(
            err.contains("26.0 GiB") && err.contains("drop_text_encoders"),
            "{err}"
        );
        options.drop_text_encoders = true;
        assert_eq!(footprint.peak(&options), 19 << 30);
        assert!(footprint.check(&options, "flux-2").is_ok());
        options.memory_budget_gib = None;
        assert!(ModelFootprint {
            text_encoders: u64::MAX / 2,
            denoiser_and_vae: 1
        }
        .check(&options, "x")
        .is_ok());
    }

    #[test]
    fn a_tiny_model_folder_is_measured_as_f32() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/tiny-sd15");
        let footprint = ModelFootprint::of(&dir).unwrap();
        // Stored in f32: the footprint is the tensor bytes of the files.
        let unet = std::fs::metadata(dir.join("unet/diffusion_pytorch_model.safetensors"))
            .unwrap()
            .len();
        assert!(footprint.denoiser_and_vae > unet);
        assert!(footprint.denoiser_and_vae < unet * 2);
        assert!(footprint.text_encoders > 100_000);
    }
}
