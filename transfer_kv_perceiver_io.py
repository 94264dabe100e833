"""k/v transfer: prepare each chosen backbone to read its target's modality.

    python transfer_kv_perceiver_io.py --dataset_config demo
    python transfer_kv_perceiver_io.py --dataset_config oxford --csv_path pickaback_oxford_result.csv

For every row (target T, backbone K) of pickaback_<cfg>_result.csv, writes
    <K's gradual_prune folder>/<K's checkpoint stem>_kv_transfer_<T>.pth.tar
(e.g. checkpoint-20_kv_transfer_3.pth.tar), which the target stage trains the target on. It is K's chosen
CPG backbone checkpoint (checkpoints_perceiver_io/CPG_single_scratch_woexp/perceiver_io/<cfg>/<K>/gradual_prune/)
plus a key `kv_transfer` = {target, target_id, backbone, source_checkpoint, copied}.

- Cross-modal (T's modality differs from K's): K never used its projection of T's modality (ownership 0, free).
  T's input adapter and k/v projection of that modality, as T computes with them, are copied into
  `model_state_dict` from T's own earlier model: its CPG backbone if there is one, else its baseline. The mask stays
  0, so the target trainer gives these weights to T, which starts from what T had learnt.
- Same modality: K's projection must keep serving K, so nothing is copied; T reuses it through its piggymask.

The stage script run_pickaback/transfer_kv.sh does the same through utils/stages.py and skips pairs already done.
"""
import argparse
import logging
from pathlib import Path

from packnet_models_pickaback.kv_transfer import transfer
from utils.config import load_dataset_config
from utils.errors import report_user_errors
from utils.layout import Layout
from utils.runtime import setup_logging
from utils.stages import Run, kv_jobs, selected_pairs

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


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_path)
    cfg = load_dataset_config(args.dataset_config, check_folders=False)
    run = Run(cfg, Path("."), list(range(1, len(cfg.groups) + 1)))
    layout = Layout(Path("."), cfg.name, args.arch, Path(args.checkpoint_root))
    pairs = selected_pairs(run, args.csv_path or layout.result_csv)
    outs = []
    for t, k, k_path, source in kv_jobs(run, layout, pairs):      # every pair is checked before anything is written
        outs.append(layout.kv_transfer_file(k_path, t))
        transfer(cfg, t, k, k_path, source, outs[-1])
    return outs


if __name__ == "__main__":
    main()
