"""Training speed: samples/s of a bare perceiver-pytorch PerceiverIO step, of the baseline trainer and of the CPG
target trainer, interleaved in one process, with the ratios to the bare step, the share of the machine's measured
matmul rate, and the share of a training step spent loading its batch.

    python tools/benchmark_train.py                       # demo and oxford sizes on the CPU
    python tools/benchmark_train.py --sizes oxford --device cuda --amp --rounds 5
    python tools/benchmark_train.py --attention einsum    # our trainers on perceiver-pytorch's einsum attention

All three train the same shapes on the same random images for the same number of steps: the bare step is
perceiver-pytorch's PerceiverIO (the blocks our network is built from) on pre-computed Fourier-feature tokens, a
mean over latents and a linear head, with plain SGD; the baseline trainer is utils.trainer.Trainer.train_epoch on a
one-task network; the CPG trainer is the same on a second task that picks (piggymask) over a pruned first task. The
trainers read uint8 images through the loader training uses (utils.data.DeviceLoader: moved to the device, flipped
and normalised there), so their figures include loading; the bare step reads ready tokens. Each round runs the three
once, in turn; the figures are the medians over rounds. FLOPs per step come from PyTorch's FlopCounterMode; the
matmul rate from timing a large matmul on the same device, in float32, or in bf16 with --amp (all three then run
under bf16 autocast). "loading" is one epoch of the trainers' loader alone, as a share of the baseline trainer's
epoch.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
import torch.nn.functional as F
from perceiver_pytorch import PerceiverIO
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from models import cpg
from models.build import Network
from models.perceiver_io import ImageAdapter, use_fused_attention
from utils.data import DeviceLoader
from utils.images import BatchTransform
from utils.runtime import autocast, select_device
from utils.trainer import Trainer, make_optimizers

# (model config, image size, batch size, number of classes) of the demo config and of the original's oxford config
SIZES = {
    "demo": (dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=16, latent_dim=64, cross_heads=2,
                  cross_dim_head=16, latent_heads=2, latent_dim_head=32, ff_mult=2), 8, 32, 3),
    "oxford": (dict(num_freq_bands=6, max_freq=10.0, depth=3, num_latents=256, latent_dim=512, cross_heads=1,
                    cross_dim_head=64, latent_heads=8, latent_dim_head=64, ff_mult=4), 64, 8, 4),
}


class RandomImages(Dataset):
    """uint8 images, as the image cache holds them."""

    def __init__(self, n, size, classes):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class RandomTexts(Dataset):
    """float text features with a padding mask (True = a real token, at least a quarter of the tokens), as the text
    cache holds them."""

    def __init__(self, n, length, dim, classes):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, length, dim, generator=g)
        lengths = torch.randint(max(length // 4, 1), length + 1, (n, 1), generator=g)
        self.mask = torch.arange(length).unsqueeze(0) < lengths
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "mask": self.mask[i], "y": self.y[i]}


class Bare(torch.nn.Module):
    def __init__(self, config, tokens_dim, classes):
        super().__init__()
        self.perceiver = PerceiverIO(dim=tokens_dim, queries_dim=config["latent_dim"], depth=config["depth"],
                                     num_latents=config["num_latents"], latent_dim=config["latent_dim"],
                                     cross_heads=config["cross_heads"], latent_heads=config["latent_heads"],
                                     cross_dim_head=config["cross_dim_head"],
                                     latent_dim_head=config["latent_dim_head"], decoder_ff=False)
        self.head = torch.nn.Linear(config["latent_dim"], classes)

    def forward(self, tokens):
        return self.head(self.perceiver(tokens).mean(dim=1))


def bare_epoch(model, optimizer, batches, amp=False):
    model.train()
    for tokens, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast(tokens.device, amp):
            logits = model(tokens)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()


def networks(config, classes, device, fused=True, modality="image"):
    """(one-task network for the baseline trainer, two-task network whose second task picks over the first), both
    of `modality`; the text width and length are tiny unless `config` sets text_dim and max_text_length."""
    config = {"text_dim": 16, "max_text_length": 8, **config}
    base = Network.new(config)
    base.start_task("t1", modality, classes)
    base.set_trainable("t1")
    target = Network.new(config)
    target.start_task("t1", modality, classes)
    cpg.prune_to(target.model, modality, 1, 0.5)
    target.claim_shared("t1")
    target.start_task("t2", modality, classes)
    target.set_trainable("t2")
    base.model.to(device)
    target.model.to(device)
    for net in (base, target):
        use_fused_attention(net.model, fused)
    return base, target


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_rate(device, dtype=torch.float32, n=2048, repeats=10):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * n ** 3 * repeats / seconds


def flops_per_step(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def load_epoch(loader):
    for batch in loader:
        batch["x"].sum()                                              # touch the data (and wait for it on a GPU)


def network_flops_per_sample(net, task, batch, amp=False, fused=True):
    """FLOPs of one training step (forward and backward) per sample of `net`'s task `task`, counted on two samples of
    `batch` with perceiver-pytorch's einsum attention (FlopCounterMode does not count every fused attention kernel;
    the arithmetic is the same); the attention is `fused` again afterwards."""
    net.activate(task)
    model = net.model
    use_fused_attention(model, False)
    x = batch["x"][:2]
    mask = batch["mask"][:2] if "mask" in batch else None
    try:
        with FlopCounterMode(display=False) as counter:
            with autocast(x.device, amp):
                logits = model(x, mask=mask)
            F.cross_entropy(logits.float(), batch["y"][:2]).backward()
    finally:
        use_fused_attention(model, fused)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def measure(size, device, rounds, steps, amp=False, fused=True, *, config=None, image=None, batch=None,
            classes=None, modality="image", text=(128, 384), bare=True, eval_batch=None, matmul=True):
    """The figures benchmark() prints, as a dict. `size` (SIZES) gives the model config, image side, batch and
    classes; `config`, `image`, `batch` and `classes` override them. With `modality` "text" the trainers train on
    random text features of `text` = (tokens, features) and there is no bare step (`bare` False also leaves it out:
    then the FLOPs are counted on our network). With `eval_batch` the baseline network's test-set evaluation (batches
    of `eval_batch`, as the stages evaluate) and a forward pass of 2 samples (the backbone search's mutation trials)
    are timed too. `matmul` False skips timing the matmul rate (its key is then None).

    Keys: size, config, image, batch, classes, modality, amp, fused, device, samples_per_s ({run: samples/s} of
    "bare perceiver-pytorch" (with the bare step), "baseline trainer", "CPG target trainer" and, with eval_batch,
    "evaluation"), forward2_s (seconds per 2-sample forward pass, with eval_batch), loading_share (one epoch's
    loading / the baseline trainer's epoch), flops_per_sample (one training step's, the bare step's when it runs),
    matmul_rate (FLOP/s of a large matmul, bf16 with amp) and peak_memory (bytes: the most allocated on the GPU
    while the runs ran, both trainers' networks included; None on the CPU)."""
    size_config, size_image, size_batch, size_classes = SIZES[size]
    config, image = config or size_config, image or size_image
    batch, classes = batch or size_batch, classes or size_classes
    text_model = modality == "text"
    bare = bare and not text_model
    if text_model:
        data = RandomTexts(batch * steps, text[0], text[1], classes)
        config = {**config, "max_text_length": text[0], "text_dim": text[1]}
        transform = eval_transform = None
    else:
        data = RandomImages(batch * steps, image, classes)
        transform = BatchTransform([0.5] * 3, [0.25] * 3, flip=True)
        eval_transform = BatchTransform([0.5] * 3, [0.25] * 3, flip=False)
    pin = device.type == "cuda"
    loader = DeviceLoader(DataLoader(data, batch_size=batch, shuffle=False, pin_memory=pin), device, transform)
    runs = {}
    if bare:
        bands, max_freq = config["num_freq_bands"], config["max_freq"]
        tokens = ImageAdapter(bands, max_freq)                        # our network's pixels + Fourier features
        batches = [(tokens(b["x"]), b["y"]) for b in loader]
        torch.manual_seed(0)
        bare_model = Bare(config, batches[0][0].shape[-1], classes).to(device)
        bare_opt = torch.optim.SGD(bare_model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
        runs["bare perceiver-pytorch"] = lambda: bare_epoch(bare_model, bare_opt, batches, amp)
    base, target = networks(config, classes, device, fused, modality)
    base_trainer = Trainer(base, "t1", device, loader, None, amp=amp)
    base_opt, _ = make_optimizers(base, "t1", 1e-2, 0.0)
    target_trainer = Trainer(target, "t2", device, loader, None, amp=amp)
    target_opt, mask_opt = make_optimizers(target, "t2", 1e-2, 1e-4)
    runs["baseline trainer"] = lambda: base_trainer.train_epoch(1, base_opt, weight_decay=4e-5)
    runs["CPG target trainer"] = lambda: target_trainer.train_epoch(1, target_opt, mask_opt, 4e-5)
    runs["loading"] = lambda: load_epoch(loader)
    if eval_batch:
        eval_loader = DeviceLoader(DataLoader(data, batch_size=eval_batch, shuffle=False, pin_memory=pin), device,
                                   eval_transform)
        runs["evaluation"] = lambda: base_trainer.evaluate(eval_loader)
        two = {k: v.to(device) for k, v in data[:2].items()}
        if not text_model:
            two["x"] = eval_transform(two["x"])

        @torch.no_grad()
        def forward2(repeats=10):
            base.model.eval()
            for _ in range(repeats):
                with autocast(device, amp):
                    base.model(two["x"], mask=two.get("mask")).float().sum().item()
        runs["forward of 2 samples"] = forward2
    import logging
    logging.getLogger("root").setLevel(logging.WARNING)               # no per-epoch log lines while timing
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for fn in runs.values():                                          # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if bare:
        flops = flops_per_step(lambda: bare_epoch(bare_model, bare_opt, batches[:1])) / batch
    else:
        flops = network_flops_per_sample(base, "t1", next(iter(loader)), amp, fused)
    rate = matmul_rate(device, torch.bfloat16 if amp else torch.float32) if matmul else None
    samples = batch * steps
    median = {name: statistics.median(t) for name, t in times.items()}
    per_s = {name: samples / median[name] for name in runs
             if name not in ("loading", "forward of 2 samples")}
    return {"size": size, "config": config, "image": image, "batch": batch, "classes": classes,
            "modality": modality, "amp": amp, "fused": fused, "device": device, "samples_per_s": per_s,
            "forward2_s": median["forward of 2 samples"] / 10 if eval_batch else None,
            "loading_share": median["loading"] / median["baseline trainer"], "flops_per_sample": flops,
            "matmul_rate": rate, "peak_memory": peak}


def benchmark(size, device, rounds, steps, amp=False, fused=True):
    r = measure(size, device, rounds, steps, amp, fused)
    config, image, batch = r["config"], r["image"], r["batch"]
    rate, flops, per_s = r["matmul_rate"], r["flops_per_sample"], r["samples_per_s"]
    bare_rate = per_s["bare perceiver-pytorch"]
    print(f"\n{size} size ({image}x{image} images, depth {config['depth']}, {config['num_latents']} x "
          f"{config['latent_dim']} latents, batch {batch}) on {device_name(device)}"
          f"{', bf16 autocast' if amp else ''}, our attention {'fused' if fused else 'einsum'}: "
          f"{'bf16' if amp else 'float32'} matmul {rate / 1e9:.1f} GFLOP/s, {flops / 1e6:.1f} MFLOP per "
          f"sample (bare step)")
    print(f"{'':24}{'samples/s':>12}{'x bare':>9}{'share of matmul rate':>23}")
    for name in ("bare perceiver-pytorch", "baseline trainer", "CPG target trainer"):
        print(f"{name:24}{per_s[name]:12.1f}{per_s[name] / bare_rate:9.2f}{100 * per_s[name] * flops / rate:22.1f}%")
    print(f"loading (uint8 batch to {device.type}, flip, normalise): {100 * r['loading_share']:.1f}% of a baseline "
          f"trainer step")


def device_name(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["demo", "oxford"], choices=list(SIZES), help="model sizes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed epoch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for all three; share of the bf16 matmul rate")
    p.add_argument("--attention", choices=["fused", "einsum"], default="fused",
                   help="attention of our trainers (the bare step is always perceiver-pytorch's einsum)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device, args.amp)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for size in args.sizes:
        benchmark(size, device, args.rounds, args.steps, args.amp, args.attention == "fused")


if __name__ == "__main__":
    main()
