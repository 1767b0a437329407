//! The LoRAs of a job: checked against the `loras/` folder when the job is
//! queued (the file exists, was made for the model's family; its digest
//! goes into the spec), checked again by the worker before it runs (the
//! same file is still there), and listed for the adapters.

use std::collections::BTreeSet;

use cyberimage_core::{GenerationSpec, ModelFamily, ValidationError};
use cyberimage_store::loras::{tensor_names, LoraInfo};

use crate::error::JobsError;
use crate::service::{file_work, JobService};

/// The model families a LoRA's layer names say it was made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFamily {
    /// SD 1.x / 2.x (one text encoder, UNet with attention in its first block).
    Sd1,
    Sdxl,
    Sd3,
    Flux,
}

impl LoraFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            LoraFamily::Sd1 => "SD 1.x/2.x",
            LoraFamily::Sdxl => "SDXL",
            LoraFamily::Sd3 => "SD 3",
            LoraFamily::Flux => "FLUX",
        }
    }

    fn suits(self, model: ModelFamily) -> bool {
        match self {
            LoraFamily::Sd1 => matches!(
                model,
                ModelFamily::Sd15 | ModelFamily::Sd21 | ModelFamily::SdTurbo
            ),
            LoraFamily::Sdxl => model == ModelFamily::Sdxl,
            LoraFamily::Sd3 => model == ModelFamily::Sd3,
            LoraFamily::Flux => matches!(model, ModelFamily::FluxDev | ModelFamily::FluxSchnell),
        }
    }
}

/// What the tensor names give away (None: nothing telling).
pub fn family_of(names: &BTreeSet<String>) -> Option<LoraFamily> {
    let any = |needles: &[&str]| names.iter().any(|n| needles.iter().any(|p| n.contains(p)));
    if any(&[
        "double_blocks",
        "single_blocks",
        "single_transformer_blocks",
        "img_attn",
        "txt_attn",
    ]) {
        Some(LoraFamily::Flux)
    } else if any(&[
        "joint_blocks",
        "context_block",
        "lora_te3_",
        "text_encoder_3.",
    ]) {
        Some(LoraFamily::Sd3)
    } else if any(&["transformer.transformer_blocks.", "lora_transformer_"]) {
        // diffusers' names of a joint-attention transformer: FLUX's double
        // blocks and SD 3's blocks share them.
        None
    } else if any(&[
        "lora_te2_",
        "text_encoder_2.",
        "input_blocks_4_1_transformer_blocks_1",
        "add_embedding",
    ]) {
        Some(LoraFamily::Sdxl)
    } else if any(&[
        "down_blocks_0_attentions",
        "down_blocks.0.attentions",
        "input_blocks_1_1_",
    ]) {
        Some(LoraFamily::Sd1)
    } else {
        None
    }
}

impl JobService {
    /// The LoRA files in `loras/`, by name.
    pub async fn loras(&self) -> Result<Vec<LoraInfo>, JobsError> {
        let store = self.store.clone();
        Ok(file_work(move || store.loras().list()).await?)
    }

    /// The LoRA files with the family their layer names give away (`None`:
    /// not told, e.g. diffusers names FLUX and SD 3 share, or a file whose
    /// header cannot be read).
    pub async fn loras_with_family(
        &self,
    ) -> Result<Vec<(LoraInfo, Option<LoraFamily>)>, JobsError> {
        let store = self.store.clone();
        Ok(file_work(move || {
            let library = store.loras();
            Ok(library
                .list()?
                .into_iter()
                .map(|info| {
                    let family = library
                        .path_of(&info.name)
                        .and_then(|path| tensor_names(&path).ok())
                        .and_then(|names| family_of(&names));
                    (info, family)
                })
                .collect())
        })
        .await?)
    }

    /// Fills in the digest of each of `spec`'s LoRAs; refuses one that is
    /// not in `loras/`, is not a LoRA, or was made for another family.
    pub(crate) async fn check_loras(&self, spec: &mut GenerationSpec) -> Result<(), JobsError> {
        if spec.loras.is_empty() {
            return Ok(());
        }
        let family = self
            .catalogue
            .get(&spec.model)
            .map(|m| m.family)
            .ok_or_else(|| ValidationError::new("model", "unknown model"))?;
        let store = self.store.clone();
        let names: Vec<String> = spec.loras.iter().map(|l| l.name.clone()).collect();
        let model = spec.model.clone();
        let found = file_work(move || {
            let library = store.loras();
            let mut found = Vec::new();
            for name in &names {
                let Some(path) = library.path_of(name) else {
                    let have: Vec<String> = library.list()?.into_iter().map(|l| l.name).collect();
                    return Ok(Err(ValidationError::new(
                        "loras",
                        format!(
                            "no LoRA named {name:?} in {} (it has: {})",
                            library.folder().display(),
                            if have.is_empty() { "none".to_string() } else { have.join(", ") }
                        ),
                    )));
                };
                let tensors = match tensor_names(&path) {
                    Ok(names) => names,
                    Err(e) => return Ok(Err(ValidationError::new("loras", format!("LoRA {name:?}: {e}")))),
                };
                if !tensors.iter().any(|t| t.contains("lora")) {
                    return Ok(Err(ValidationError::new(
                        "loras",
                        format!("{name:?} holds no LoRA tensors (lora_down / lora_A): is it a model checkpoint?"),
                    )));
                }
                if let Some(made_for) = family_of(&tensors).filter(|f| !f.suits(family)) {
                    return Ok(Err(ValidationError::new(
                        "loras",
                        format!("LoRA {name:?} is for {} models; {model} is not one", made_for.as_str()),
                    )));
                }
                found.push(library.info(name)?);
            }
            Ok(Ok(found))
        })
        .await??;
        for (lora, info) in spec.loras.iter_mut().zip(found) {
            lora.sha256 = info.sha256;
        }
        self.check_loras_fit(spec).await
    }

    /// The engine's word on whether the LoRAs fit the model, layer by
    /// layer, from the files' headers: a LoRA naming a layer the model
    /// lacks, or of another model's sizes, is refused here rather than
    /// failing its job. Without an engine in this process (a front end
    /// with no [engine]), or without the model's weights on this machine,
    /// the worker finds out when the job runs.
    async fn check_loras_fit(&self, spec: &GenerationSpec) -> Result<(), JobsError> {
        let reader = self.file_reader.read().expect("reader lock").clone();
        let (Some(reader), Some(model)) = (reader, self.catalogue.get(&spec.model).cloned()) else {
            return Ok(());
        };
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || reader.check_loras(&model, &spec))
            .await
            .map_err(|e| ValidationError::new("loras", format!("checking the LoRAs failed: {e}")))?
            .map_err(|e| JobsError::Invalid(ValidationError::new("loras", e.to_string())))
    }

    /// Before a job runs: its LoRAs are still the files it was queued with.
    pub(crate) async fn verify_loras(&self, spec: &GenerationSpec) -> Result<(), String> {
        if spec.loras.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let loras = spec.loras.clone();
        file_work(move || {
            Ok(loras
                .iter()
                .try_for_each(|lora| match store.loras().info(&lora.name) {
                    Ok(info) if info.sha256 == lora.sha256 => Ok(()),
                    Ok(_) => Err(format!(
                        "LoRA {:?} was replaced by another file after the job was queued",
                        lora.name
                    )),
                    Err(e) => Err(format!("LoRA {:?}: {e}", lora.name)),
                }))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn families_are_told_apart_by_their_layer_names() {
        let sd1 = names(&[
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
        ]);
        assert_eq!(family_of(&sd1), Some(LoraFamily::Sd1));
        let sdxl = names(&[
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_up.weight",
            "lora_te2_x.alpha",
        ]);
        assert_eq!(family_of(&sdxl), Some(LoraFamily::Sdxl));
        assert_eq!(
            family_of(&names(&[
                "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"
            ])),
            Some(LoraFamily::Flux)
        );
        assert_eq!(
            family_of(&names(&[
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"
            ])),
            Some(LoraFamily::Flux)
        );
        assert_eq!(
            family_of(&names(&[
                "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"
            ])),
            Some(LoraFamily::Sd3)
        );
        // FLUX's double blocks and SD 3's blocks have the same diffusers
        // names: not told apart, even beside a second text encoder.
        assert_eq!(
            family_of(&names(&[
                "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight",
                "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"
            ])),
            None
        );
        assert_eq!(
            family_of(&names(&[
                "unet.mid_block.attentions.0.proj_in.lora_A.weight"
            ])),
            None
        );
        assert!(
            LoraFamily::Sd1.suits(ModelFamily::Sd15) && !LoraFamily::Sd1.suits(ModelFamily::Sdxl)
        );
    }
}
