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


def networks(config, classes, device, fused=True):
    """(one-task network for the baseline trainer, two-task network whose second task picks over the first)."""
    config = {**config, "text_dim": 16, "max_text_length": 8}
    base = Network.new(config)
    base.start_task("t1", "image", classes)
    base.set_trainable("t1")
    target = Network.new(config)
    target.start_task("t1", "image", classes)
    cpg.prune_to(target.model, "image", 1, 0.5)
    target.claim_shared("t1")
    target.start_task("t2", "image", classes)
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


def benchmark(size, device, rounds, steps, amp=False, fused=True):
    config, image, batch, classes = SIZES[size]
    data = RandomImages(batch * steps, image, classes)
    transform = BatchTransform([0.5] * 3, [0.25] * 3, flip=True)
    loader = DeviceLoader(DataLoader(data, batch_size=batch, shuffle=False, pin_memory=device.type == "cuda"),
                          device, transform)
    bands, max_freq = config["num_freq_bands"], config["max_freq"]
    tokens = ImageAdapter(bands, max_freq)                            # our network's pixels + Fourier features
    batches = [(tokens(b["x"]), b["y"]) for b in loader]
    torch.manual_seed(0)
    bare = Bare(config, batches[0][0].shape[-1], classes).to(device)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    base, target = networks(config, classes, device, fused)
    base_trainer = Trainer(base, "t1", device, loader, None, amp=amp)
    base_opt, _ = make_optimizers(base, "t1", 1e-2, 0.0)
    target_trainer = Trainer(target, "t2", device, loader, None, amp=amp)
    target_opt, mask_opt = make_optimizers(target, "t2", 1e-2, 1e-4)
    runs = {"bare perceiver-pytorch": lambda: bare_epoch(bare, bare_opt, batches, amp),
            "baseline trainer": lambda: base_trainer.train_epoch(1, base_opt, weight_decay=4e-5),
            "CPG target trainer": lambda: target_trainer.train_epoch(1, target_opt, mask_opt, 4e-5),
            "loading": lambda: load_epoch(loader)}
    import logging
    logging.getLogger("root").setLevel(logging.WARNING)               # no per-epoch log lines while timing
    for fn in runs.values():                                          # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    flops = flops_per_step(lambda: bare_epoch(bare, bare_opt, batches[:1]))
    rate = matmul_rate(device, torch.bfloat16 if amp else torch.float32)
    samples = batch * steps
    median = {name: statistics.median(t) for name, t in times.items()}
    bare_rate = samples / median["bare perceiver-pytorch"]
    print(f"\n{size} size ({image}x{image} images, depth {config['depth']}, {config['num_latents']} x "
          f"{config['latent_dim']} latents, batch {batch}) on {device_name(device)}"
          f"{', bf16 autocast' if amp else ''}, our attention {'fused' if fused else 'einsum'}: "
          f"{'bf16' if amp else 'float32'} matmul {rate / 1e9:.1f} GFLOP/s, {flops / batch / 1e6:.1f} MFLOP per "
          f"sample (bare step)")
    print(f"{'':24}{'samples/s':>12}{'x bare':>9}{'share of matmul rate':>23}")
    for name in ("bare perceiver-pytorch", "baseline trainer", "CPG target trainer"):
        per_s = samples / median[name]
        print(f"{name:24}{per_s:12.1f}{per_s / bare_rate:9.2f}{100 * per_s * flops / batch / rate:22.1f}%")
    print(f"loading (uint8 batch to {device.type}, flip, normalise): "
          f"{100 * median['loading'] / median['baseline trainer']:.1f}% of a baseline trainer step")


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
