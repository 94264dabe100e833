"""The k/v transfer: a chosen backbone checkpoint made ready to read its target's modality.

For a (target T, backbone K) pair it writes K's chosen CPG backbone checkpoint plus a key `kv_transfer` =
{target, target_id, backbone, source_checkpoint (relative to the file), copied}:
- cross-modal (T's modality differs from K's): K never used its projection of T's modality (ownership 0, free).
  T's input adapter and k/v projection of that modality, as T computes with them, are copied into
  `model_state_dict` from T's own earlier model. The mask stays 0, so the target trainer gives these weights to T,
  which starts from what T had learnt.
- same modality: K's projection must keep serving K, so nothing is copied; T reuses it through its piggymask.
"""
import logging
import os
from pathlib import Path

import pandas as pd

from models.build import Network
from packnet_models_pickaback.inference import kv_layer_name, reader_state
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError

log = logging.getLogger("root")


def read_pairs(csv_path, cfg):
    """[(target id, backbone id)] of a backbone search result, every row checked against the config before any
    work starts."""
    if not Path(csv_path).is_file():
        raise UserError(f"backbone search result {csv_path} does not exist: run run_pickaback/find_backbone.sh "
                        f"{cfg.name} first (or give another CSV).")
    try:
        table = pd.read_csv(csv_path, skipinitialspace=True, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise UserError(f"{csv_path} is not a CSV of target_id,task_id rows: fix or regenerate it.") from None
    table.columns = [c.strip() for c in table.columns]
    if not {"target_id", "task_id"} <= set(table.columns):
        raise UserError(f"{csv_path} has columns {list(table.columns)}, not target_id,task_id: give the "
                        f"pickaback_<cfg>_result.csv that find_backbone.sh writes.")
    try:
        pairs = [(int(t.strip()), int(k.strip())) for t, k in zip(table["target_id"], table["task_id"], strict=True)]
    except (ValueError, AttributeError):
        raise UserError(f"{csv_path} has a row that is not two task ids: fix or regenerate it.") from None
    for t, k in pairs:
        for task_id in (t, k):
            if not 1 <= task_id <= len(cfg.groups):
                raise UserError(f"{csv_path} names task {task_id}, but config '{cfg.name}' has tasks "
                                f"1..{len(cfg.groups)}: fix the row or rerun run_pickaback/find_backbone.sh "
                                f"{cfg.name}.")
        if t == k:
            raise UserError(f"{csv_path} picks task {t} as its own backbone: fix the row.")
    targets = [t for t, _ in pairs]
    if len(set(targets)) != len(targets):
        raise UserError(f"{csv_path} has more than one row for a target: keep one backbone per target.")
    return pairs


def reads(ckpt, modality):
    """Whether a task of the checkpoint's network owns weights of its k/v projection of `modality`."""
    return any(ckpt["masks"][kv_layer_name(modality)].unique().tolist())


def graft_reader(ckpt, checkpoint_name, source, target):
    """Copy task `target`'s input adapter and k/v projection of its modality, as it computes with them, from the
    checkpoint `source` into `ckpt` (of a network none of whose tasks reads that modality: the weights are free, and
    the next task trained on it takes them). Returns the copied keys."""
    net = Network.from_checkpoint(load_checkpoint(source))
    if target not in net.history:
        raise UserError(f"{source} has no task '{target}' (it has {', '.join(net.history)}): check the folder.")
    state, copied = ckpt["model_state_dict"], []
    for key, tensor in reader_state(net, target).items():
        if state[key].shape != tensor.shape:
            raise UserError(f"{key} has shape {tuple(tensor.shape)} in {source} but {tuple(state[key].shape)} "
                            f"in {checkpoint_name}: both must come from the same dataset config.")
        state[key] = tensor.clone()
        copied.append(key)
    log.info(f"copied {', '.join(copied)}")
    return copied


def transfer(cfg, target_id, backbone_id, backbone_checkpoint, target_source, out):
    """Write the k/v transfer checkpoint of (T, K) to `out`. `backbone_checkpoint` is K's chosen backbone;
    `target_source` is (path, stage name) of T's own earlier model, read only for a cross-modal pair. Returns the
    copied keys."""
    target, backbone = cfg.task_name(target_id), cfg.task_name(backbone_id)
    modality, backbone_modality = cfg.modality(target), cfg.modality(backbone)
    ckpt = load_checkpoint(backbone_checkpoint)
    source, copied = None, []
    if modality == backbone_modality:
        log.info(f"target {target_id} ({target}, {modality}) and backbone {backbone_id} ({backbone}) share the "
                 f"modality: nothing copied, the backbone's {modality} k/v keeps serving {backbone} and the target "
                 f"reuses it through its piggymask")
    else:
        source, stage = Path(target_source[0]), target_source[1]
        log.info(f"target {target_id} ({target}, {modality}) on backbone {backbone_id} ({backbone}, "
                 f"{backbone_modality}): copying the target's {modality} adapter and k/v from its {stage} {source}")
        if reads(ckpt, modality):
            owners = ckpt["masks"][kv_layer_name(modality)].unique().tolist()
            raise UserError(f"{backbone_checkpoint}: the {modality} k/v projection is already owned by task(s) "
                            f"{[o for o in owners if o]}, so the target's cannot take its place: transfer onto a "
                            f"backbone that never used {modality}.")
        copied = graft_reader(ckpt, backbone_checkpoint, source, target)
    # the source as a path relative to the written file, so a run's folders can be moved or shared whole
    ckpt["kv_transfer"] = {"target": target, "target_id": int(target_id), "backbone": backbone,
                           "source_checkpoint": None if source is None else
                           os.path.relpath(source.resolve(), Path(out).parent.resolve()), "copied": copied}
    save_checkpoint(ckpt, out)
    log.info(f"wrote {out}")
    return copied
