"""What the benchmark scripts share: timing, the matmul anchor, FLOP
counting, peak RSS, the commit measured, and building + running the
engine's Rust examples. torch is imported only by the functions that use it
(load_status.py runs without it).

The examples are built once, before anything is timed, so that editing the
sources while a long benchmark runs cannot change (or break) what it
measures halfway through.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def write_sd15_weights(model):
    """Random weights in the real SD 1.5 component configs
    (runwayml/stable-diffusion-v1-5) under `model`, once: the files the SD
    1.5 benchmarks load in both engines."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if (model / "unet" / "diffusion_pytorch_model.safetensors").exists():
        return
    print("writing random full-size SD 1.5 weights to", model, flush=True)
    UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32,
    ).save_pretrained(model / "unet", safe_serialization=True)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    ).save_pretrained(model / "vae", safe_serialization=True)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )).save_pretrained(model / "text_encoder", safe_serialization=True)


# FLUX.1-dev's full width (24 heads of 128, T5 width 4096) with 1 double +
# 1 single block: the transformer flux_vs_diffusers.py and lora_cost.py time.
FLUX_BLOCKS_CONFIG = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                          num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                          guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def median(xs):
    return statistics.median(xs)


def timed(fn, repeats):
    """Wall-clock seconds of each of `repeats` calls."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def flops(fn):
    """FLOPs of one call, as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_anchor():
    """The anchor for FLOP floors: a 2048³ float32 matmul, here, now, in
    torch and in our engine (candle → gemm); the floor uses the faster of
    the two, so that it stays a floor on CPUs where one library's kernels
    lag (torch's reached 213 GFLOP/s on a Zen 5 core pair where gemm's
    AVX-512 kernels reached 455)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    secs = median(timed(lambda: a @ b, 5))
    rates = {"torch": 2 * 2048**3 / secs / 1e9}
    (ours,) = run_json_lines(build("cyberimage-engine", "matmul_rate"))
    rates["cyberimage"] = ours["gflops"]
    rates["best"] = max(rates.values())
    return rates


def machine():
    """The CPU the numbers were taken on: model name, family/model, cores,
    and whether it has AVX-512 BF16 (our bf16 kernels need it)."""
    info, flags = {}, ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "cpu family", "model") and key not in info:
            info[key] = value
        if key == "flags" and not flags:
            flags = value
    bf16 = "avx512_bf16" in flags.split()
    amx = "amx_bf16" in flags.split()
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}), "
            f"{os.cpu_count()} cores, {'with' if bf16 else 'without'} AVX-512 BF16, "
            f"{'with' if amx else 'without'} AMX-BF16")


def has_amx():
    return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()


def bf16_anchor():
    """The bf16 anchors, here, now: a 2048³ bfloat16 matmul in torch
    (oneDNN: AMX tiles where the CPU has them), and our kernels on the same
    product (`matmul_kernels`: f32, AVX-512 BF16, AMX) with the bare AMX
    tile peak (products on resident tiles, every thread busy)."""
    import torch

    a, b = torch.randn(2048, 2048).bfloat16(), torch.randn(2048, 2048).bfloat16()
    a @ b
    secs = median(timed(lambda: a @ b, 5))
    (ours,) = run_json_lines(build("cyberimage-kernels", "matmul_kernels"), 2048, 5)
    return {"torch_bf16_gflops": 2 * 2048**3 / secs / 1e9, **{f"ours_{k}": v for k, v in ours.items()}}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_rev():
    """The commit measured (with "+changes" when the work tree differs)."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "crates"], cwd=ROOT).returncode != 0
    return rev + ("+changes" if dirty else "")


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))


def build(package, example=None):
    """`cargo build --release` of an example (or the package's binary);
    returns the executable's path."""
    cmd = ["cargo", "build", "--release", "-q", "-p", package]
    if example:
        cmd += ["--example", example]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    release = target_dir() / "release"
    return release / "examples" / example if example else release / "cyberimage"


def run_json_lines(exe, *argv):
    """Runs a built example; returns the JSON records it printed, one per line."""
    run = subprocess.run([str(exe), *map(str, argv)], capture_output=True, text=True)
    if run.returncode != 0:
        # A negative code is a signal: -9 is usually the OOM killer.
        sys.exit(f"{Path(exe).name} {argv[:1]} exited with {run.returncode}: {run.stderr}\n{run.stdout}")
    return [json.loads(line) for line in run.stdout.splitlines()]
