"""Attention memory and speed: one CUB-size training step of the network with perceiver-pytorch's einsum attention
and with the fused one (torch.nn.functional.scaled_dot_product_attention), each in a fresh process.

    python tools/benchmark_attention.py                              # batch 8, 224x224 images, CPU or CUDA
    python tools/benchmark_attention.py --batch 32 --device cuda --amp

The step is what the CPG trainer does on a first task: the default model config (depth 3, 256 latents of 512,
one cross-attention head of 64), a fresh `models.build.Network` with a 5-class image task started and made
trainable, random 224x224 images (50,176 tokens of 3 + 2 * (2 * 6 + 1) = 29 features per sample), forward,
cross-entropy and backward (no optimiser step), with bf16 autocast under --amp. Both modes use the same seed, so
the same weights and images; the logits of the two are compared.

Measured, per mode, in a process of its own: peak memory of the first step, as growth over what was in use just
before it (the model, its gradients and the batch are allocated already): on CUDA
torch.cuda.max_memory_allocated after a reset minus torch.cuda.memory_allocated before; on the CPU the process's
peak resident set (resource.getrusage ru_maxrss) minus its resident set before the step (which includes memory
the allocator touched and has not yet returned, so it is an upper bound on the tensors' peak). Step time: the mean
over --steps further steps ("first step" is timed apart; it is the step time under --steps 0).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.build import Network
from models.perceiver_io import use_fused_attention
from utils.runtime import autocast, select_device

CONFIG = dict(num_freq_bands=6, max_freq=10.0, depth=3, num_latents=256, latent_dim=512, cross_heads=1,
              cross_dim_head=64, latent_heads=8, latent_dim_head=64, ff_mult=4, text_dim=384, max_text_length=128)
CLASSES = 5
MODES = ("einsum", "fused")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8; the original CUB batch is 32)")
    p.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224, CUB's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast around forward and loss")
    p.add_argument("--steps", type=int, default=1, help="timed steps after the first (default 1)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="attention paths to measure")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)   # measure one mode in this process
    return p.parse_args(argv)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args):
    """One mode in this process: peak memory growth of the first step, step time, logits (as a JSON line)."""
    device = select_device(args.device, args.amp)
    torch.manual_seed(0)
    net = Network.new(CONFIG)
    net.start_task("t1", "image", CLASSES)
    net.set_trainable("t1")
    model = net.model.to(device).train()
    use_fused_attention(model, args.child == "fused")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g).to(device)

    def step():
        model.zero_grad(set_to_none=False)               # gradients stay allocated, as in training
        with autocast(device, args.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return logits.detach().float().cpu()

    for p in model.parameters():                         # allocate the gradients before measuring
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = rss_bytes()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    logits = step()
    first = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
        note = ""
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = peak_rss - before
        note = "the peak before the step was higher: growth under-reported" if maxrss_before >= peak_rss else ""
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"mode": args.child, "device": str(device), "before": before, "peak": peak, "note": note,
            "first_s": first, "step_s": statistics.mean(times) if times else first, "logits": logits.tolist()}


def run_child(mode, args):
    argv = [sys.executable, str(Path(__file__).resolve()), "--batch", str(args.batch), "--image-size",
            str(args.image_size), "--device", args.device, "--steps", str(args.steps), "--child", mode]
    if args.amp:
        argv.append("--amp")
    proc = subprocess.run(argv, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"mode": mode, "error": f"exit {proc.returncode}: " + " | ".join(tail),
                "output": proc.stdout + proc.stderr}                 # the child's whole output, for a log
    return json.loads(lines[-1])


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    device = select_device(args.device, args.amp)
    tokens = args.image_size ** 2
    features = 3 + 2 * (2 * CONFIG["num_freq_bands"] + 1)
    attn_matrix = args.batch * CONFIG["cross_heads"] * CONFIG["num_latents"] * tokens * (2 if args.amp else 4)
    print(f"one training step: batch {args.batch}, {args.image_size}x{args.image_size} images = {tokens:,} tokens x "
          f"{features} features, {device}, {'bf16 autocast' if args.amp else 'fp32'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"(one cross-attention matrix [b, heads, latents, tokens] is {gib(attn_matrix)})")
    kind = "max_memory_allocated growth" if device.type == "cuda" else "peak RSS growth"
    results = {}
    print(f"{'mode':8s} {kind:>28s} {'first step':>11s} {'step time':>10s}")
    for mode in args.modes:
        r = results[mode] = run_child(mode, args)
        if "error" in r:
            print(f"{mode:8s} failed: {r['error']}")
            continue
        print(f"{mode:8s} {gib(r['peak']):>28s} {r['first_s']:10.2f}s {r['step_s']:9.2f}s"
              + (f"  ({r['note']})" if r["note"] else ""))
    ok = [results[m] for m in MODES if m in results and "error" not in results[m]]
    if len(ok) == 2:
        einsum, fused = ok
        diff = (torch.tensor(fused["logits"]) - torch.tensor(einsum["logits"])).abs().max().item()
        print(f"fused / einsum: memory {fused['peak'] / einsum['peak']:.3f}x, step time "
              f"{fused['step_s'] / einsum['step_s']:.3f}x")
        print(f"max |logits fused - logits einsum| = {diff:.3g}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
