"""Benchmark: how much faster one epoch of a text task loads from the feature cache than when every sample is
tokenised and embedded in `__getitem__` each epoch (the original's way). Prints the numbers.

    python tools/benchmark_text_cache.py --dataset_config demo --dataset group5
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

from utils.config import load_dataset_config
from utils.data import load_text_encoder, text_samples, text_task
from utils.errors import UserError, report_user_errors


class PerSampleText(Dataset):
    """The original's text dataset: read, tokenise and embed one sample per __getitem__, every epoch."""

    def __init__(self, folder, encoder_name, max_length):
        self.samples = text_samples(folder)
        self.tokenizer, self.encoder = load_text_encoder(encoder_name)
        self.max_length = max_length

    def __len__(self):
        return len(self.samples)

    @torch.no_grad()
    def __getitem__(self, i):
        path, label = self.samples[i]
        tok = self.tokenizer(path.read_text(encoding="utf-8").strip(), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        ids = tok["input_ids"]
        x = self.encoder.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))[0]
        return {"x": x, "mask": tok["attention_mask"][0].bool(), "y": label}


def epoch_seconds(dataset, batch_size):
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, shuffle=True):
        pass
    return time.perf_counter() - start


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_config", default="demo", help="config name")
    p.add_argument("--dataset", default=None, help="a text task (default: the config's first text task)")
    p.add_argument("--data_root", default=None, help="data root")
    p.add_argument("--batch_size", type=int, default=32, help="batch size")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_dataset_config(args.dataset_config, args.data_root, check_folders=False)
    if not cfg.text_groups:
        raise UserError(f"config '{cfg.name}' has no text tasks to benchmark: choose one with modality.text_groups.")
    group = args.dataset or cfg.text_groups[0]
    cfg.check_task_data(group)
    cached = text_task(cfg, group, "train")                      # first epoch: computes (or reuses) the cache
    cached_s = min(epoch_seconds(cached, args.batch_size) for _ in range(3))
    uncached = PerSampleText(cfg.task_folder(group, "train"), cfg.text_encoder, cfg.text_max_length)
    uncached_s = epoch_seconds(uncached, args.batch_size)
    print(f"task {group} of '{cfg.name}': {len(cached)} samples, encoder {cfg.text_encoder}, "
          f"max length {cfg.text_max_length}")
    print(f"epoch with feature cache:            {cached_s * 1000:9.1f} ms")
    print(f"epoch tokenising+embedding per item: {uncached_s * 1000:9.1f} ms")
    print(f"speed-up: {uncached_s / cached_s:.1f}x")


if __name__ == "__main__":
    main()
