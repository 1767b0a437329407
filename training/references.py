"""Records diffusers' pictures on the trained shapes-64 weights, for the
parity test crates/engine/tests/trained_parity.rs: the first parity whose
output means something.

    python training/references.py fixtures/trained/shapes-64

For each prompt: the initial latents (torch's seeded randn), the text
embeddings, and the final picture of 20 DDIM steps at guidance 7, float32
HWC in [0, 1] as diffusers' output_type="np" gives it."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPTS = [
    ("a red circle on a white background", ""),
    ("a large blue star at the top on a yellow background", ""),
    ("two small green squares on the left, black background", "blurry"),
]
SEED = 20261201
STEPS, GUIDANCE = 20, 7.0


def main():
    folder = Path(sys.argv[1])
    torch.set_num_threads(2)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    refs = {}
    with torch.no_grad():
        for i, (prompt, negative) in enumerate(PROMPTS):
            g = torch.Generator().manual_seed(SEED + i)
            latents = torch.randn((1, 4, 16, 16), generator=g)
            ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            refs[f"{i}.input_ids"] = ids.to(torch.int64)
            refs[f"{i}.text_embeddings"] = pipe.text_encoder(ids)[0].contiguous()
            refs[f"{i}.initial_latents"] = latents
            image = pipe(prompt, negative_prompt=negative or None, num_inference_steps=STEPS,
                         guidance_scale=GUIDANCE, latents=latents.clone(), height=64, width=64,
                         output_type="np").images[0]
            refs[f"{i}.final_image"] = torch.from_numpy(image).contiguous()
    save_file(refs, str(folder / "references.safetensors"))
    (folder / "references.json").write_text(json.dumps({
        "prompts": [{"prompt": p, "negative_prompt": n} for p, n in PROMPTS], "seed": SEED, "steps": STEPS,
        "guidance_scale": GUIDANCE, "width": 64, "height": 64, "scheduler": "DDIM",
        "final_image": "float32 HWC in [0,1], as diffusers' output_type=np"}, indent=2))


if __name__ == "__main__":
    main()
