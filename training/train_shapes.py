"""Trains `shapes-64`, a small but real text-to-image model of the Stable
Diffusion 1.5 architecture (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL, DDIM), on the synthetic captioned shapes of shapes.py, on
a CPU, and saves it in the diffusers layout (its model card, README.md, is
written by hand beside the weights).

    python training/train_shapes.py --out fixtures/trained/shapes-64

(venv: fixtures/requirements.txt; the pinned versions are the ones it was
trained with). Everything is seeded: the dataset, the initial weights, the
batches, the noise. Phases:

1. a dataset of captioned scenes, none of them a held-out triple;
2. the autoencoder (64x64x3 <-> 16x16x4), trained on the pictures alone;
3. the pictures encoded once (posterior means), the latent scale measured;
4. the text encoder and UNet trained together on epsilon prediction with
   classifier-free-guidance dropout, min-SNR weighting and an EMA copy
   (cycles 0-2 of CYCLES);
5. the conversion (cycle 3): the models, stored as float16, go on training
   with a zero-terminal-SNR schedule and v prediction (Lin et al. 2023,
   "Common Diffusion Noise Schedules and Sample Steps are Flawed"), half of
   every batch at high noise. After phase 4 the position words had no
   effect: under the SD schedule the last timestep still holds ~7 % of the
   picture, so the layout came from the starting noise, and epsilon
   prediction's loss hardly depends on the layout at high noise, so the
   text encoder never learned to tell "left" from "right" (its outputs for
   the five position words were 60x closer than for two colours).

Phase 5 can start from the saved float16 model of phases 1-4 (`--resume
FOLDER`, as the committed weights were made); the one-stage run rounds its
models through float16 at the same point, so both give the same weights.
"""

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import shapes  # noqa: E402
from tiny_common import bytes_to_unicode, clip_bpe_source  # noqa: E402

SEED = 20261201
# The UNet's cosine cycles: (steps, peak learning rate, timestep sampling,
# target). Each later cycle is a warm restart from the EMA the one before
# ended with. "high-noise" samples t = 999(1-u^2); "half-high" draws half of
# each batch from t >= 750, where the layout is decided. Target "epsilon" is
# the SD schedule with noise prediction, "v-zero-snr" the rescaled schedule
# (last timestep pure noise) with v prediction: the model that is saved.
CYCLES = [(5000, 6e-4, "uniform", "epsilon"), (5000, 4e-4, "uniform", "epsilon"),
          (3000, 3e-4, "high-noise", "epsilon"), (4000, 3e-4, "half-high", "v-zero-snr"),
          (3000, 2e-4, "uniform", "v-zero-snr")]
CONVERSION = 3  # the first "v-zero-snr" cycle; from it on, the models go through float16 before each cycle
MERGES = 8192  # the real CLIP BPE, truncated: vocab ids equal the real ones below 512 + MERGES
VOCAB = 512 + MERGES + 2


def write_tokenizer(folder: Path):
    """vocab.json + merges.txt: CLIP's byte-level BPE and its first MERGES
    merges, so a token's id is its id in the real CLIP vocabulary (bos and
    eos sit at the end, as they do there)."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = [tuple(m.split()) for m in clip_bpe_source()[1:1 + MERGES]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **special, "model_max_length": 77, "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer", "clean_up_tokenization_spaces": True}))
    return VOCAB - 2, VOCAB - 1


def build_models(bos, eos):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=64, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(16, 32, 32), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    return text_encoder, unet, vae


def make_dataset(n, seed):
    rng = random.Random(seed)
    excluded = set(shapes.held_out_triples())
    pictures = np.empty((n, shapes.SIZE, shapes.SIZE, 3), np.uint8)
    scenes = []
    for i in range(n):
        scene = shapes.random_scene(rng, excluded)
        pictures[i] = shapes.render(scene)
        scenes.append(scene)
    return pictures, scenes


def to_tensor(pictures):
    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def foreground(pictures, scenes):
    """Per pixel, whether it belongs to a shape (differs from the scene's
    background): the autoencoder's loss weighs those pixels up, or it
    learns the background, which is most of every picture, and blurs the
    shapes' colours away."""
    backgrounds = np.asarray([shapes.BACKGROUNDS[s["background"]] for s in scenes], np.int16)[:, None, None, :]
    return (np.abs(pictures.astype(np.int16) - backgrounds).max(-1) > 8)


def _reconstruct(vae, params, pictures, masks, steps, batch, peak_lr, seed, name, log, kl_weight=None):
    """The autoencoder's training loop, shared by both phases: cosine
    learning rate from peak_lr, reconstruction error (L1 + L2) with shape
    pixels weighted 21x. With kl_weight the encoder trains too, under a KL
    term; without it the encoder only encodes (no gradients)."""
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, len(pictures), (batch,), generator=g)
        x = to_tensor(pictures[idx.numpy()])
        weight = 1.0 + 20.0 * torch.from_numpy(masks[idx.numpy()]).float().unsqueeze(1)
        with torch.set_grad_enabled(kl_weight is not None):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        err = (recon - x).abs() + (recon - x) ** 2
        loss = (weight * err).sum() / (weight.sum() * x.shape[1])
        if kl_weight is not None:
            kl = posterior.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])
            loss = loss + kl_weight * kl
        for group in opt.param_groups:
            group["lr"] = peak_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            extra = f" kl {kl.item():.3f}" if kl_weight is not None else ""
            log(f"{name} step {step} loss {loss.item():.4f}{extra}")
    vae.eval()


def train_vae(vae, pictures, masks, steps, batch, log):
    _reconstruct(vae, vae.parameters(), pictures, masks, steps, batch, 1e-3, SEED + 1, "vae", log,
                 kl_weight=1e-4)


def finetune_decoder(vae, pictures, masks, steps, batch, log):
    """The decoder alone, the encoder frozen: the latent space (and so what
    the UNet learns) stays as it is, while the pictures get sharper, as
    Stability's fine-tuned SD decoders were made."""
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    for p in vae.quant_conv.parameters():
        p.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    _reconstruct(vae, params, pictures, masks, steps, batch, 5e-4, SEED + 4, "decoder", log)
    for p in vae.parameters():
        p.requires_grad_(True)


@torch.no_grad()
def encode_all(vae, pictures, batch=256):
    out = []
    for i in range(0, len(pictures), batch):
        out.append(vae.encode(to_tensor(pictures[i:i + batch])).latent_dist.mean)
    return torch.cat(out)


def noise_schedule(target):
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         rescale_betas_zero_snr=target == "v-zero-snr").alphas_cumprod


def sample_timesteps(sampling, batch, g):
    if sampling == "uniform":
        return torch.randint(0, 1000, (batch,), generator=g)
    if sampling == "half-high":
        half = batch // 2
        return torch.cat([torch.randint(0, 1000, (batch - half,), generator=g),
                          torch.randint(750, 1000, (half,), generator=g)])
    return (999.0 * (1.0 - torch.rand((batch,), generator=g) ** 2)).round().long()


def train_denoiser(text_encoder, unet, latents, captions_of, tokenize, batch, log, checkpoint=None, cycle=0):
    """One cosine cycle of CYCLES; a later cycle (a warm restart) starts
    from the EMA weights the one before it ended with, with a fresh
    optimizer and its own random streams."""
    steps, peak, sampling, target = CYCLES[cycle]
    alphas = noise_schedule(target)
    snr = alphas / (1 - alphas)
    if target == "epsilon":
        weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    else:
        # Min-SNR-5 for v prediction with SNR + 1 in place of SNR, so that
        # the zero-SNR last timestep keeps its weight (with SNR it has none).
        weights = torch.clamp(snr + 1, max=5.0) / (snr + 1)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    g = torch.Generator().manual_seed(SEED + 2 + 10 * cycle)
    rng = random.Random(SEED + 3 + 10 * cycle)
    unet.train()
    text_encoder.train()
    warmup = 200
    started = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        texts = ["" if rng.random() < 0.1 else captions_of(int(i), rng) for i in idx]
        ids = tokenize(texts)
        t = sample_timesteps(sampling, batch, g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        wanted = noise if target == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = (weights[t] * ((pred - wanted) ** 2).mean(dim=(1, 2, 3))).mean()
        lr = peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - started)
            log(f"unet cycle {cycle} step {step} loss {loss.item():.4f} lr {lr:.2e} ({rate:.2f} steps/s)")
        if checkpoint and step > 0 and step % 1000 == 0:
            checkpoint(ema_text, ema_unet)
    return ema_text, ema_unet


@torch.no_grad()
def through_float16(*models):
    """Rounds every weight to float16 and back, as saving and loading the
    stored model does."""
    for model in models:
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))


def halve(folder: Path):
    """Stores the weights as float16 (they were trained and are run in
    float32: half the bytes in the repo and the binary, and well inside the
    model's own noise), and drops tokenizer.json, which vocab.json and
    merges.txt already say."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*/*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})
    (folder / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    # A resumed run's loaded models remember the folder they came from.
    for path in folder.glob("*/config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def resumed_from(earlier, now):
    """Every resume point the saved model went through, oldest first."""
    before = earlier.get("resumed_from") or []
    return ([before] if isinstance(before, str) else before) + [now]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures/trained/shapes-64"))
    ap.add_argument("--dataset", type=int, default=30000)
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--decoder-steps", type=int, default=2000)
    ap.add_argument("--unet-cycles", type=int, default=len(CYCLES), help="run only the first N of CYCLES")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", metavar="FOLDER",
                    help="start at --from-cycle from FOLDER, the saved (float16) model of the cycles before it")
    ap.add_argument("--from-cycle", type=int, default=CONVERSION,
                    help=f"with --resume: the first cycle to run (>= {CONVERSION})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_lines = []

    def log(msg):
        line = f"[{time.time() - started:7.1f}s] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    bos, eos = write_tokenizer(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    pictures, scenes = make_dataset(args.dataset, SEED)
    earlier = {"seconds": 0, "log": []}
    if args.resume:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        resume = Path(args.resume)
        earlier = json.loads((resume / "training.json").read_text())
        text_encoder = CLIPTextModel.from_pretrained(resume / "text_encoder", torch_dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(resume / "unet", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(resume / "vae", torch_dtype=torch.float32).eval()
        scale = vae.config.scaling_factor
        first_cycle = args.from_cycle
        assert first_cycle >= CONVERSION, "only the float16-rounded cycles can be resumed"
        log(f"resumed from {resume} (float16) at cycle {first_cycle}; dataset: {len(pictures)} scenes")
    else:
        text_encoder, unet, vae = build_models(bos, eos)
        log(f"parameters: text {sum(p.numel() for p in text_encoder.parameters())}, "
            f"unet {sum(p.numel() for p in unet.parameters())}, vae {sum(p.numel() for p in vae.parameters())}")
        log(f"dataset: {len(pictures)} scenes")
        masks = foreground(pictures, scenes)
        train_vae(vae, pictures, masks, args.vae_steps, 32, log)
        vae.save_pretrained(Path(str(out) + ".checkpoint") / "vae")
        latents = encode_all(vae, pictures)
        scale = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scale)
        latents = latents * scale
        log(f"latents {tuple(latents.shape)}, scaling_factor {scale:.5f}")
        finetune_decoder(vae, pictures, masks, args.decoder_steps, 32, log)
        first_cycle = 0

    def tokenize(texts):
        return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    def save(text, denoiser, folder, target):
        zero_snr = target == "v-zero-snr"
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type="v_prediction" if zero_snr else "epsilon",
                                  rescale_betas_zero_snr=zero_snr,
                                  timestep_spacing="trailing" if zero_snr else "leading")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=denoiser,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)

    # Checkpoints go beside the output so that training can be watched
    # (training/evaluate.py) while it runs.
    for cycle in range(first_cycle, args.unet_cycles):
        if cycle >= CONVERSION:
            # Where the earlier model was stored: a run resumed here and a
            # one-stage run hold the same numbers (the latents come from
            # the rounded autoencoder, which later roundings leave as is).
            through_float16(text_encoder, unet, vae)
            if cycle == first_cycle or cycle == CONVERSION:
                latents = encode_all(vae, pictures) * scale
        target = CYCLES[cycle][3]
        text_encoder, unet = train_denoiser(
            text_encoder, unet, latents, lambda i, rng: shapes.caption(scenes[i], rng), tokenize,
            args.batch, log,
            checkpoint=lambda t, u: save(t, u, Path(str(out) + ".checkpoint"), target), cycle=cycle)
    save(text_encoder, unet, out, CYCLES[args.unet_cycles - 1][3])
    halve(out)
    elapsed = time.time() - started
    log(f"saved to {out} after {elapsed:.0f} s")
    (out / "training.json").write_text(json.dumps({
        "seed": SEED, "dataset": args.dataset, "vae_steps": args.vae_steps, "unet_cycles": CYCLES[:args.unet_cycles],
        "decoder_steps": args.decoder_steps,
        "batch": args.batch, "threads": args.threads,
        "resumed_from": resumed_from(earlier, f"{args.resume} at cycle {first_cycle}") if args.resume else None,
        "seconds": round(elapsed) + earlier["seconds"], "seconds_by_stage": earlier.get(
            "seconds_by_stage", [earlier["seconds"]]) + [round(elapsed)] if args.resume else [round(elapsed)],
        "torch": torch.__version__, "held_out": shapes.held_out_triples(), "log": earlier["log"] + log_lines},
        indent=1))


if __name__ == "__main__":
    main()
