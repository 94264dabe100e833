"""The GPU check's measurements, and how each check is run and printed: one line per check with its figure and
`ok`, `failed (<reason>; log: <file>)` or `skipped (<reason>)`. The measurements are tools/benchmark_train.py's
(the training steps of each input shape), the write of one resume state, and tools/benchmark_attention.py's.
"""
import gc
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

from tools import benchmark_attention
from tools.benchmark_train import matmul_rate, measure, networks
from tools.gpu_check_projection import StepTimes
from utils.layout import resume_file
from utils.resume import Resume
from utils.trainer import make_optimizers

EVAL_BATCH = 100                                                   # utils.data.load_task's val_batch_size
GIB = 2 ** 30


class CheckError(Exception):
    """A check that failed with `reason` (one sentence) and the whole `output` to keep in its log file."""

    def __init__(self, reason, output=""):
        super().__init__(reason)
        self.reason, self.output = reason, output


def one_line(error):
    """An exception as one short phrase: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    first = first[:160] + ("..." if len(first) > 160 else "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def slug(name):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


class Checks:
    """Runs checks and prints one line per check: name, figure, ok / failed (reason; log) / skipped (reason)."""

    def __init__(self, logs, out=None):
        self.logs, self.out = Path(logs), out                        # None: sys.stdout at the time of printing
        self.status = []

    def line(self, name, figure, status):
        text = f"{name:<34} {figure:<88} {status}" if figure else f"{name:<34} {status}"
        print(text, file=self.out or sys.stdout, flush=True)
        self.status.append(status.split()[0])

    def log_file(self, name, text):
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{slug(name)}.log"
        path.write_text(text, encoding="utf-8")
        return path

    def run(self, name, fn):
        """Run `fn`, which returns (figure text, result) or raises; print its line; returns the result or None."""
        try:
            figure, result = fn()
        except CheckError as e:
            self.failed(name, e.reason, e.output)
            return None
        except Exception as e:                                      # any error fails this check, not the others
            self.failed(name, one_line(e), traceback.format_exc())
            return None
        finally:
            release_memory()
        self.line(name, figure, "ok")
        return result

    def failed(self, name, reason, output):
        path = self.log_file(name, output or reason)
        self.line(name, "", f"failed ({reason.rstrip('.')}; log: {path})")

    def skip(self, name, reason):
        self.line(name, "", f"skipped ({reason})")

    @property
    def failures(self):
        return self.status.count("failed")


def release_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory(peak):
    return "peak mem n/a" if peak is None else f"peak mem {peak / GIB:5.2f} GiB"


# ---- the measurements --------------------------------------------------------------------------------------------
def bf16_supported(device):
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


def bf16_peak(device):
    """(FLOP/s, matrix side): the best of 3 timings of a large bf16 matmul on `device`; on the CPU, where bf16
    matmuls can be far slower than float32 ones, a small one and the faster of the two precisions."""
    if device.type == "cuda":
        return max(matmul_rate(device, torch.bfloat16, 8192, 20) for _ in range(3)), 8192
    return max(matmul_rate(device, dtype, 512, 2) for dtype in (torch.bfloat16, torch.float32) for _ in range(3)), 512


def train_check(shape, batch, amp, device, rounds, steps, peak, evaluate):
    """One measurement of tools/benchmark_train.py at `shape`; returns (figure, result)."""
    text = shape.modality == "text"
    r = measure("oxford", device, rounds, steps, amp, config=dict(shape.model), batch=batch, classes=4,
                image=None if text else shape.dims[0], modality=shape.modality,
                text=shape.dims if text else (128, 384), bare=False, eval_batch=EVAL_BATCH if evaluate else None,
                matmul=False)
    per_s = r["samples_per_s"]
    share = 100 * per_s["baseline trainer"] * r["flops_per_sample"] / peak
    evaluated = f"{per_s['evaluation']:9.1f}" if evaluate else f"{'-':>9}"
    figure = (f"{per_s['baseline trainer']:9.1f} samples/s  CPG {per_s['CPG target trainer']:9.1f}  eval {evaluated}"
              f"  {share:5.1f} % of bf16 peak  {memory(r['peak_memory'])}")
    return figure, r


def step_times(results):
    """{(Shape, amp): StepTimes} from the train checks' results {(Shape, amp, batch): measure() result}; the
    evaluation figures come from the measurement that timed them."""
    times = {}
    for (shape, amp, batch), r in results.items():
        key = (shape, amp)
        entry = times.setdefault(key, {"baseline": {}, "cpg": {}, "evaluate": None, "forward2": 0.0})
        entry["baseline"][batch] = 1 / r["samples_per_s"]["baseline trainer"]
        entry["cpg"][batch] = 1 / r["samples_per_s"]["CPG target trainer"]
        if "evaluation" in r["samples_per_s"]:
            entry["evaluate"], entry["forward2"] = 1 / r["samples_per_s"]["evaluation"], r["forward2_s"]
    return {key: StepTimes(e["baseline"], e["cpg"], e["evaluate"], e["forward2"]) for key, e in times.items()
            if e["evaluate"] is not None}


def resume_check(config, device, work):
    """The time to write one resume state of the CPG target network of the model `config` (both optimisers) into
    `work`."""
    _, net = networks(config, 4, device)
    optimizer, mask_optimizer = make_optimizers(net, "t2", 1e-2, 1e-4)
    for p in net.model.parameters():                              # the optimisers' state exists after a step
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    mask_optimizer.step()
    data = SimpleNamespace(cfg=SimpleNamespace(name="check", text_encoder=""),
                           train_loader=SimpleNamespace(generator=torch.Generator()))
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".gpu_check_") as folder:
        resume = Resume(resume_file(folder), {"check": True})
        objects = {"optimizer": optimizer, "mask_optimizer": mask_optimizer}
        times = []
        for epoch in range(3):
            start = time.perf_counter()
            resume.save({"kind": "finetune", "width": 1.0}, epoch, net, objects, data, 0.0, 0.0)
            times.append(time.perf_counter() - start)
        size = resume.path.stat().st_size
    seconds = min(times)
    return f"{seconds:9.3f} s per epoch ({size / 2 ** 20:.0f} MiB, in {work})", seconds


def attention_check(mode, amp, device, steps, einsum=None):
    """tools/benchmark_attention.py's measurement of one attention mode at the CUB size, in its own process; with
    the `einsum` mode's result, the memory and time relative to it."""
    argv = ["--batch", "8", "--device", str(device), "--steps", str(steps)] + (["--amp"] if amp else [])
    r = benchmark_attention.run_child(mode, benchmark_attention.parse_args(argv))
    if "error" in r:
        raise CheckError(r["error"], r.get("output", r["error"]))
    figure = f"{r['step_s']:9.3f} s per step of 8 ({8 / r['step_s']:.1f} samples/s)  {memory(r['peak'])} growth"
    if einsum and einsum["peak"] > 0:
        figure += f" ({r['peak'] / einsum['peak']:.2f}x einsum's, time {r['step_s'] / einsum['step_s']:.2f}x)"
    return figure, r


