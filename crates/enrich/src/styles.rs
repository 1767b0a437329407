//! The styles a prompt can be enriched in: the six the CyberImage app
//! offers (same names, same default, so its users' scripts and habits
//! carry over), a few of ours, and any the config adds. Each style is an
//! instruction for the chat model; the shared rules (keep the subject,
//! answer with the prompt alone) are added once, in `system_prompt`.

use serde::{Deserialize, Serialize};

/// The app's default when a request names no style.
pub const DEFAULT_STYLE: &str = "cyberpunk";

/// One style: its name (what requests send), a line for menus, and what
/// the chat model is asked to add.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Style {
    pub name: String,
    pub description: String,
    pub instructions: String,
}

/// The written form the target model reads best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptForm {
    /// CLIP-only models (SD 1.x/2.x, SDXL): 77 tokens, comma-separated
    /// phrases; anything past the limit is cut off unread.
    Phrases,
    /// Models with a T5 encoder (FLUX, SD 3.x): hundreds of tokens, and
    /// they follow descriptive sentences better than tag lists.
    Sentences,
}

fn style(name: &str, description: &str, instructions: &str) -> Style {
    Style {
        name: name.to_owned(),
        description: description.to_owned(),
        instructions: instructions.to_owned(),
    }
}

/// The built-in styles, in menu order.
pub fn builtin() -> Vec<Style> {
    vec![
        style(
            "cyberpunk",
            "Neon, rain-slick streets, high tech and low life",
            "Push the scene towards cyberpunk: neon signage and reflections, dense \
             futuristic cityscapes, corporate megastructures, cybernetic details, night or \
             smog, cinematic framing and dramatic contrast.",
        ),
        style(
            "anime",
            "Japanese animation: clean lines, vivid colour",
            "Render the idea as an anime key visual: clean line art, cel shading, vivid \
             palette, expressive characters and poses, a detailed painted background and \
             lighting that sets the emotional tone.",
        ),
        style(
            "realistic",
            "Photographic: lens, light, texture",
            "Make it a convincing photograph: name the camera and lens or focal length, the \
             aperture and depth of field, the kind and direction of light, real surface \
             textures and small imperfections, and a natural composition.",
        ),
        style(
            "enhance",
            "Keep the style, add detail and craft",
            "Keep whatever style the prompt already has. Add concrete visual detail: \
             materials and textures, setting, light and time of day, mood, colour palette \
             and composition.",
        ),
        style(
            "fantasy",
            "Magic, myth and painted worlds",
            "Carry the scene into high fantasy: enchanted places and creatures, ornate \
             costume and architecture, glowing magic, ethereal light, the look of a \
             finished digital painting or concept art.",
        ),
        style(
            "sci-fi",
            "Spacecraft, alien worlds, future tech",
            "Frame it as science fiction: advanced machines and architecture, alien \
             landscapes or deep space, holographic and energy effects, believable \
             engineering detail, cinematic concept-art lighting.",
        ),
        // Ours.
        style(
            "cinematic",
            "A film still: lens, grade, blocking",
            "Describe it as a still from a film: shot size and camera angle, lens, lighting \
             setup, colour grade, atmosphere (haze, rain, dust) and where the subject \
             stands in the frame.",
        ),
        style(
            "watercolor",
            "Loose watercolour on paper",
            "Turn it into a watercolour painting: soft washes and blooms, visible paper \
             grain, loose edges, a limited harmonious palette and white space left \
             unpainted.",
        ),
        style(
            "pixel-art",
            "Retro game sprites and scenes",
            "Make it pixel art: a small fixed palette, crisp square pixels, no \
             anti-aliasing, a retro video-game scene or sprite, clear silhouettes.",
        ),
        style(
            "product",
            "Clean studio product shot",
            "Present the subject as a commercial product photograph: a clean studio \
             backdrop, softbox lighting with controlled reflections, sharp focus, \
             a pleasing angle and room for a caption.",
        ),
    ]
}

/// What the chat model is told: the style, the rules every style shares,
/// and the form and length the target model reads.
pub fn system_prompt(style: &Style, form: Option<PromptForm>) -> String {
    let form = match form {
        Some(PromptForm::Phrases) => {
            "Write comma-separated descriptive phrases, most important first, at most 60 \
             words: the target model reads only its first 77 tokens."
        }
        Some(PromptForm::Sentences) => {
            "Write one or two flowing descriptive sentences in plain English, at most 120 \
             words: the target model follows natural language well."
        }
        None => "Write a single paragraph of at most 80 words.",
    };
    format!(
        "You rewrite prompts for a text-to-image model. {instructions}\n\
         Rules: keep the subject, the people, the objects and anything the user asked for \
         exactly; add only what makes the picture more vivid; never add text, logos or \
         watermarks unless asked. {form} Answer with the rewritten prompt only: no \
         preamble, no quotes, no notes.",
        instructions = style.instructions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_six_styles_are_there_with_its_default() {
        let names: Vec<String> = builtin().into_iter().map(|s| s.name).collect();
        for app in [
            "cyberpunk",
            "anime",
            "realistic",
            "enhance",
            "fantasy",
            "sci-fi",
        ] {
            assert!(names.iter().any(|n| n == app), "{app} missing");
        }
        assert!(names.iter().any(|n| n == DEFAULT_STYLE));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "style names are unique");
    }

    #[test]
    fn the_system_prompt_names_the_form_the_model_reads() {
        let s = &builtin()[0];
        assert!(system_prompt(s, Some(PromptForm::Phrases)).contains("77 tokens"));
        assert!(system_prompt(s, Some(PromptForm::Sentences)).contains("sentences"));
        assert!(system_prompt(s, None).contains(&s.instructions));
    }
}
