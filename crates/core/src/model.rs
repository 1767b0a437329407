//! The model catalogue: which models a user can ask for, where their weights
//! live, and the settings each one defaults to.

use serde::{Deserialize, Serialize};

/// The key the seed contract prefers as default when it is configured.
pub const PREFERRED_DEFAULT_MODEL: &str = "flux-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFamily {
    FluxDev,
    FluxSchnell,
    Sd3,
    Sdxl,
    Sd15,
    Sd21,
    SdTurbo,
}

impl ModelFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FluxDev => "flux-dev",
            Self::FluxSchnell => "flux-schnell",
            Self::Sd3 => "sd3",
            Self::Sdxl => "sdxl",
            Self::Sd15 => "sd15",
            Self::Sd21 => "sd21",
            Self::SdTurbo => "sd-turbo",
        }
    }

    /// Width and height must be multiples of this. Transformer families
    /// patchify the 8×-downsampled latent in 2×2 patches, hence 16; the
    /// UNet families only need the VAE's factor of 8.
    pub fn size_multiple(self) -> u32 {
        match self {
            Self::FluxDev | Self::FluxSchnell | Self::Sd3 => 16,
            Self::Sdxl | Self::Sd15 | Self::Sd21 | Self::SdTurbo => 8,
        }
    }

    /// Whether a negative prompt changes anything: FLUX distils guidance
    /// into the model and has no unconditional branch.
    pub fn supports_negative_prompt(self) -> bool {
        !matches!(self, Self::FluxDev | Self::FluxSchnell)
    }

    /// Whether the family reads long natural-language prompts (a T5
    /// encoder, 256-512 tokens) rather than CLIP's 77 tokens, which suit
    /// short comma-separated phrases. Prompt enrichment writes to match.
    pub fn reads_long_prompts(self) -> bool {
        matches!(self, Self::FluxDev | Self::FluxSchnell | Self::Sd3)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDefaults {
    pub steps: u32,
    pub guidance_scale: f32,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// What users type: `flux-1`, `sd-3.5`, …
    pub key: String,
    /// A Hugging Face repo id (`owner/name`), a local diffusers folder, or
    /// one checkpoint file (`.safetensors`, or `.gguf` for FLUX).
    pub source: String,
    pub family: ModelFamily,
    pub description: String,
    pub defaults: ModelDefaults,
    /// For a single-file `source`: the diffusers folder or Hugging Face
    /// repo whose configs and tokenizers go with it (a checkpoint file has
    /// none). Unset: the family's reference repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// A separate VAE file (FLUX's `ae.safetensors`, or one replacing the
    /// VAE baked into a checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// Separate text-encoder files (FLUX's `clip_l` and `t5xxl`), in any
    /// order: each is recognised from its tensors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_encoders: Vec<String>,
    /// The steps a request may ask of this model, `[min, max]` (the
    /// CyberImage app's `steps_range`). Unset: 1 to `limits.max_steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_range: Option<[u32; 2]>,
    /// A distilled model that runs this many steps whatever is asked (the
    /// app's `fixed_steps`; the web form's steps field is then locked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_steps: Option<u32>,
}

impl ModelEntry {
    /// `steps_range` and `fixed_steps` make sense and hold the default.
    fn check_steps(&self) -> Result<(), String> {
        if let Some([min, max]) = self.steps_range {
            if min == 0 || min > max {
                return Err(format!(
                    "steps_range [{min}, {max}] must be 1 <= min <= max"
                ));
            }
            if !(min..=max).contains(&self.defaults.steps) {
                return Err(format!(
                    "the default steps {} are outside steps_range [{min}, {max}]",
                    self.defaults.steps
                ));
            }
        }
        if let Some(fixed) = self.fixed_steps {
            if fixed == 0 {
                return Err("fixed_steps must be at least 1".into());
            }
            if self.steps_range.is_some() {
                return Err("set steps_range or fixed_steps, not both".into());
            }
        }
        Ok(())
    }

    /// An entry with no separate component files.
    pub fn new(
        key: impl Into<String>,
        source: impl Into<String>,
        family: ModelFamily,
        description: impl Into<String>,
        defaults: ModelDefaults,
    ) -> Self {
        Self {
            key: key.into(),
            source: source.into(),
            family,
            description: description.into(),
            defaults,
            config: None,
            vae: None,
            text_encoders: Vec::new(),
            steps_range: None,
            fixed_steps: None,
        }
    }
}

impl ModelFamily {
    /// The Hugging Face repo whose configs and tokenizers a single-file
    /// checkpoint of this family uses unless told otherwise (what
    /// diffusers' `from_single_file` fetches too).
    pub fn reference_repo(self) -> &'static str {
        match self {
            Self::FluxDev => "black-forest-labs/FLUX.1-dev",
            Self::FluxSchnell => "black-forest-labs/FLUX.1-schnell",
            Self::Sd3 => "stabilityai/stable-diffusion-3.5-large",
            Self::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
            Self::Sd15 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Self::Sd21 => "stabilityai/stable-diffusion-2-1",
            Self::SdTurbo => "stabilityai/sd-turbo",
        }
    }

    /// The settings a model of this family starts from when found by a
    /// folder scan (its published defaults).
    pub fn scan_defaults(self) -> ModelDefaults {
        let (steps, guidance_scale, size) = match self {
            Self::FluxDev => (30, 3.5, 1024),
            Self::FluxSchnell => (4, 0.0, 1024),
            Self::Sd3 => (28, 4.5, 1024),
            Self::Sdxl => (30, 5.0, 1024),
            Self::Sd15 => (30, 7.5, 512),
            Self::Sd21 => (30, 7.5, 768),
            Self::SdTurbo => (1, 0.0, 512),
        };
        ModelDefaults {
            steps,
            guidance_scale,
            width: size,
            height: size,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    models: Vec<ModelEntry>,
    /// See [`Catalogue::default_key`].
    default: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogueError {
    #[error("the model catalogue is empty: configure at least one [[models]] entry")]
    Empty,
    #[error("model key {0:?} is configured twice")]
    DuplicateKey(String),
    #[error("model key {0:?} may only hold letters, digits, '.', '_' and '-'")]
    BadKey(String),
    #[error("model {key:?}: {why}")]
    BadSteps { key: String, why: String },
}

impl Catalogue {
    pub fn new(models: Vec<ModelEntry>) -> Result<Self, CatalogueError> {
        if models.is_empty() {
            return Err(CatalogueError::Empty);
        }
        for (i, m) in models.iter().enumerate() {
            let key_ok = !m.key.is_empty()
                && m.key.len() <= 64
                && m.key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !key_ok {
                return Err(CatalogueError::BadKey(m.key.clone()));
            }
            if models[..i].iter().any(|o| o.key == m.key) {
                return Err(CatalogueError::DuplicateKey(m.key.clone()));
            }
            m.check_steps().map_err(|why| CatalogueError::BadSteps {
                key: m.key.clone(),
                why,
            })?;
        }
        // The static rule is the seed's, every model taken as available.
        let mut catalogue = Self {
            models,
            default: String::new(),
        };
        catalogue.choose_default(|_| true);
        Ok(catalogue)
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    pub fn get(&self, key: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.key == key)
    }

    /// The model a request without one gets. The seed's rule is "flux-1 if
    /// available, otherwise the first available model"; until
    /// [`Catalogue::choose_default`] has asked what can run here, that is
    /// flux-1 when configured, else the first model.
    pub fn default_key(&self) -> &str {
        &self.default
    }

    /// Reads "available" in the seed's rule as "can run on this machine":
    /// flux-1 when it can, else the first model (in catalogue order) that
    /// can, else flux-1 (or the first model) all the same, so that the
    /// error a request meets names the model a user expects.
    pub fn choose_default(&mut self, can_run: impl Fn(&ModelEntry) -> bool) {
        let preferred = self.get(PREFERRED_DEFAULT_MODEL).filter(|m| can_run(m));
        if let Some(model) = preferred.or_else(|| self.models.iter().find(|m| can_run(m))) {
            self.default = model.key.clone();
        }
    }

    /// Models that ship inside the binary: first `shapes-64`, trained here
    /// (training/train_shapes.py) and able to draw what its prompts say
    /// within its tiny world, then the random-weight TEST models with real
    /// architectures: the whole pipeline runs, offline, and their pictures
    /// mean nothing.
    pub fn builtin_test_models() -> Vec<ModelEntry> {
        let shapes = ModelEntry::new(
            "shapes-64",
            "builtin:shapes-64",
            ModelFamily::Sd15,
            "A small model trained on synthetic shapes (SD 1.5 architecture, 64x64, 5 MB, \
             built in): it draws coloured circles, squares, triangles, stars, rings and crosses \
             on plain backgrounds, nothing else",
            ModelDefaults {
                steps: 20,
                guidance_scale: 7.0,
                width: 64,
                height: 64,
            },
        );
        let tiny = |name: &str, family, architecture: &str, size: &str, guidance_scale| {
            ModelEntry::new(
                format!("tiny-{name}-random"),
                format!("builtin:tiny-{name}"),
                family,
                format!(
                    "TEST MODEL with random weights ({architecture} architecture, {size}, \
                     built in): real diffusion, meaningless pictures"
                ),
                ModelDefaults {
                    steps: 4,
                    guidance_scale,
                    width: 64,
                    height: 64,
                },
            )
        };
        vec![
            shapes,
            tiny("sd15", ModelFamily::Sd15, "SD 1.5", "4.5 MB", 7.5),
            tiny("sdxl", ModelFamily::Sdxl, "SDXL", "2.3 MB", 5.0),
            tiny("sd3", ModelFamily::Sd3, "SD 3.5", "2.7 MB", 4.5),
            tiny("flux", ModelFamily::FluxDev, "FLUX.1-dev", "2 MB", 3.5),
        ]
    }

    /// The four models the seed contract lists, in the seed's order.
    pub fn seed_models() -> Vec<ModelEntry> {
        let flux = ModelDefaults {
            steps: 30,
            guidance_scale: 3.5,
            width: 1024,
            height: 1024,
        };
        let entry = |key: &str, source: &str, family, description: &str, defaults| {
            ModelEntry::new(key, source, family, description, defaults)
        };
        vec![
            entry(
                "flux-2",
                "black-forest-labs/FLUX.1-dev",
                ModelFamily::FluxDev,
                "FP8 quantized version of FLUX-1 for memory efficiency",
                flux,
            ),
            entry(
                "flux-1",
                "black-forest-labs/FLUX.1-dev",
                ModelFamily::FluxDev,
                "High-quality image generation model optimized for detailed outputs",
                flux,
            ),
            entry(
                "sd-3.5",
                "stabilityai/stable-diffusion-3.5-large",
                ModelFamily::Sd3,
                "Latest Stable Diffusion model with improved quality and speed",
                ModelDefaults {
                    steps: 28,
                    guidance_scale: 4.5,
                    width: 1024,
                    height: 1024,
                },
            ),
            entry(
                "flux-abliterated",
                "aoxo/flux.1dev-abliteratedv2",
                ModelFamily::FluxDev,
                "Modified FLUX model with enhanced capabilities",
                flux,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefers_flux_1_then_first() {
        let seed = Catalogue::new(Catalogue::seed_models()).unwrap();
        assert_eq!(seed.default_key(), "flux-1");
        let without: Vec<_> = Catalogue::seed_models()
            .into_iter()
            .filter(|m| m.key != "flux-1")
            .collect();
        assert_eq!(Catalogue::new(without).unwrap().default_key(), "flux-2");
    }

    #[test]
    fn default_is_the_first_model_that_can_run() {
        let models = || {
            Catalogue::seed_models()
                .into_iter()
                .chain(Catalogue::builtin_test_models())
                .collect::<Vec<_>>()
        };
        // A fresh machine: only the built-ins run; the trained one is first.
        let mut fresh = Catalogue::new(models()).unwrap();
        fresh.choose_default(|m| m.source.starts_with("builtin:"));
        assert_eq!(fresh.default_key(), "shapes-64");
        // FLUX weights here: flux-1, though flux-2 comes first.
        let mut flux = Catalogue::new(models()).unwrap();
        flux.choose_default(|m| {
            m.source.starts_with("builtin:") || m.family == ModelFamily::FluxDev
        });
        assert_eq!(flux.default_key(), "flux-1");
        // Nothing runs: flux-1, whose error then says what is missing.
        let mut none = Catalogue::new(models()).unwrap();
        none.choose_default(|_| false);
        assert_eq!(none.default_key(), "flux-1");
    }

    #[test]
    fn catalogue_rejects_bad_configs() {
        assert_eq!(Catalogue::new(vec![]), Err(CatalogueError::Empty));
        let mut twice = Catalogue::seed_models();
        twice.push(twice[0].clone());
        assert!(matches!(
            Catalogue::new(twice),
            Err(CatalogueError::DuplicateKey(_))
        ));
        let mut bad = Catalogue::seed_models();
        bad[0].key = "../x".into();
        assert!(matches!(
            Catalogue::new(bad),
            Err(CatalogueError::BadKey(_))
        ));
    }
}
