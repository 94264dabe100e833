"""k/v transfer: prepare each chosen backbone to read its target's modality (spec §1.5, §9; fix of §10.4).

    python transfer_kv_perceiver_io.py --dataset_config demo
    python transfer_kv_perceiver_io.py --dataset_config oxford --csv_path pickaback_oxford_result.csv

For every row (target T, backbone K) of pickaback_<cfg>_result.csv, writes
    <K's gradual_prune folder>/<K's checkpoint stem>_kv_transfer_<T>.pth.tar
(e.g. checkpoint-20_kv_transfer_3.pth.tar), which run_pickaback/w_backbone_MM.sh trains the target on. It is K's chosen
CPG backbone checkpoint (checkpoints_perceiver_io/CPG_single_scratch_woexp/perceiver_io/<cfg>/<K>/gradual_prune/)
plus a key `kv_transfer` = {target, target_id, backbone, source_checkpoint, copied}.

- Cross-modal (T's modality differs from K's): K never used its projection of T's modality (ownership 0, free).
  T's input adapter and k/v projection of that modality, as T computes with them, are copied into
  `model_state_dict` from T's own earlier model: its CPG backbone if there is one, else its baseline. The mask stays
  0, so the target trainer gives these weights to T, which starts from what T had learnt.
- Same modality: K's projection must keep serving K, so nothing is copied; T reuses it through its piggymask.
"""
import argparse
import logging
from pathlib import Path

import pandas as pd

from models.build import Network
from packnet_models_pickaback import backbone_folder, baseline_folder, kv_layer_name, reader_state
from utils.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from utils.config import load_dataset_config
from utils.errors import UserError, report_user_errors
from utils.runtime import setup_logging

log = logging.getLogger("root")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="perceiver_io", choices=["perceiver_io"], help="network architecture")
    p.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    p.add_argument("--csv_path", default=None,
                   help="backbone search result (target_id,task_id); default pickaback_<cfg>_result.csv in the "
                        "working folder")
    p.add_argument("--checkpoint_root", default="checkpoints_perceiver_io", help="root of the stage checkpoints")
    p.add_argument("--log_path", default=None, help="also append the log to this file")
    return p.parse_args(argv)


def checkpoint_stem(path):
    return Path(path).name.removesuffix(".pth.tar")


def read_pairs(csv_path, cfg):
    """[(target id, backbone id)] of the search result."""
    if not Path(csv_path).is_file():
        raise UserError(f"backbone search result {csv_path} does not exist: run run_pickaback/find_backbone.sh "
                        f"{cfg.name} first (or give --csv_path).")
    table = pd.read_csv(csv_path, skipinitialspace=True, dtype=str)
    table.columns = [c.strip() for c in table.columns]
    if not {"target_id", "task_id"} <= set(table.columns):
        raise UserError(f"{csv_path} has columns {list(table.columns)}, not target_id,task_id: give the "
                        f"pickaback_<cfg>_result.csv that find_backbone.sh writes.")
    try:
        pairs = [(int(t.strip()), int(k.strip())) for t, k in zip(table["target_id"], table["task_id"])]
    except (ValueError, AttributeError):
        raise UserError(f"{csv_path} has a row that is not two task ids: fix or regenerate it.") from None
    for t, k in pairs:
        cfg.task_name(t), cfg.task_name(k)                                   # range check with a clear error
    return pairs


def backbone_checkpoint(checkpoint_root, arch, cfg, task_id):
    folder = backbone_folder(checkpoint_root, arch, cfg, cfg.task_name(task_id))
    try:
        return find_checkpoint(folder)
    except UserError:
        raise UserError(f"no chosen CPG backbone checkpoint of task {task_id} ({cfg.task_name(task_id)}) in "
                        f"{folder}: run run_pickaback/wo_backbone.sh {cfg.name} and then "
                        f"run_pickaback/select_pruning_ratio_of_backbone.sh {cfg.name} first.") from None


def target_source(checkpoint_root, arch, cfg, task_id):
    """T's own model of the earlier stage: its CPG backbone if present, else its baseline. Returns (path, stage)."""
    group = cfg.task_name(task_id)
    try:
        return find_checkpoint(backbone_folder(checkpoint_root, arch, cfg, group)), "CPG backbone"
    except UserError:
        pass
    baseline = baseline_folder(checkpoint_root, arch, cfg, group)
    try:
        return find_checkpoint(baseline), "baseline"
    except UserError:
        raise UserError(f"task {task_id} ({group}) has neither a CPG backbone nor a baseline checkpoint under "
                        f"{checkpoint_root}: run run_pickaback/baseline.sh {cfg.name} first.") from None


def transfer(cfg, target_id, backbone_id, checkpoint_root, arch):
    """Write the k/v transfer checkpoint of (T, K); returns its path."""
    target, backbone = cfg.task_name(target_id), cfg.task_name(backbone_id)
    modality, backbone_modality = cfg.modality(target), cfg.modality(backbone)
    k_path = backbone_checkpoint(checkpoint_root, arch, cfg, backbone_id)
    ckpt = load_checkpoint(k_path)
    out = k_path.parent / f"{checkpoint_stem(k_path)}_kv_transfer_{target_id}.pth.tar"
    source, copied = None, []
    if modality == backbone_modality:
        log.info(f"target {target_id} ({target}, {modality}) and backbone {backbone_id} ({backbone}) share the "
                 f"modality: nothing copied, the backbone's {modality} k/v keeps serving {backbone} and the target "
                 f"reuses it through its piggymask")
    else:
        source, stage = target_source(checkpoint_root, arch, cfg, target_id)
        log.info(f"target {target_id} ({target}, {modality}) on backbone {backbone_id} ({backbone}, "
                 f"{backbone_modality}): copying the target's {modality} adapter and k/v from its {stage} {source}")
        net = Network.from_checkpoint(load_checkpoint(source))
        if target not in net.history:
            raise UserError(f"{source} has no task '{target}' (it has {', '.join(net.history)}): check the folder.")
        owners = ckpt["masks"][kv_layer_name(modality)].unique().tolist()
        if any(owners):
            raise UserError(f"{k_path}: the {modality} k/v projection is already owned by task(s) "
                            f"{[o for o in owners if o]}, so the target's cannot take its place: transfer onto a "
                            f"backbone that never used {modality}.")
        state = ckpt["model_state_dict"]
        for key, tensor in reader_state(net, target).items():
            if state[key].shape != tensor.shape:
                raise UserError(f"{key} has shape {tuple(tensor.shape)} in {source} but {tuple(state[key].shape)} "
                                f"in {k_path}: both must come from the same dataset config.")
            state[key] = tensor.clone()
            copied.append(key)
        log.info(f"copied {', '.join(copied)}")
    ckpt["kv_transfer"] = {"target": target, "target_id": int(target_id), "backbone": backbone,
                           "source_checkpoint": None if source is None else str(source), "copied": copied}
    save_checkpoint(ckpt, out)
    log.info(f"wrote {out}")
    return out


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_path)
    cfg = load_dataset_config(args.dataset_config, check_folders=False)
    csv_path = args.csv_path or f"pickaback_{cfg.name}_result.csv"
    pairs = read_pairs(csv_path, cfg)
    for _, k in pairs:                                                       # fail before writing anything
        backbone_checkpoint(args.checkpoint_root, args.arch, cfg, k)
    return [transfer(cfg, t, k, args.checkpoint_root, args.arch) for t, k in pairs]


if __name__ == "__main__":
    main()
