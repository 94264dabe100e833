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

Files go under the work folder ($MMPAB_WORK_DIR or the repository), as for run_pickaback/transfer_kv.sh, which
runs the same function (utils/pipeline/transfer.py); both skip pairs already done from the same checkpoints.
"""
from pathlib import Path

from utils.errors import report_user_errors
from utils.layout import Layout
from utils.pipeline.cli import add_settings_arguments, entry_run, parser, settings_from
from utils.pipeline.settings import TransferSettings
from utils.pipeline.transfer import transfer_kv
from utils.runtime import setup_logging


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    add_settings_arguments(p, TransferSettings)
    p.add_argument("--checkpoint_root", default=None,
                   help="root of the stage checkpoints (default: checkpoints_perceiver_io/ of the work folder)")
    p.add_argument("--log_path", default=None, help="also append the log to this file")
    p.add_argument("--force", action="store_true", help="redo pairs that are already done (FORCE=1)")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    s = settings_from(args, TransferSettings)
    setup_logging(args.log_path)
    run = entry_run(args, task_ids="all")
    layout = Layout(run.work_dir, run.cfg.name, s.arch, Path(args.checkpoint_root) if args.checkpoint_root else None)
    return transfer_kv(run, s, layout=layout)


if __name__ == "__main__":
    main()
