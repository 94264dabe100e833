"""What the entry points share: flags built from a stage's settings (the original's names; defaults read from the
stage script, never repeated here), the task and run flags, and the run they describe.

An entry point parses its flags, builds the same settings object the stage script builds, calls the stage's
per-task function and maps its Outcome to the documented exit codes: nothing else.
"""
import argparse
import os

from utils.config import load_dataset_config
from utils.errors import UserError
from utils.pipeline.context import Run, work_dir
from utils.pipeline.settings import EXPECTED, Valid, at_least, switch
from utils.tracking import TRACKERS, tracker_of


def add_settings_arguments(parser, cls, skip=()):
    """One flag per setting of `cls` that has flags (except those named in `skip`), as text: `settings_from` reads
    them as the stage script's variables are read. Unset flags are None, and take the script's default."""
    defaults = cls.defaults()
    group = parser.add_argument_group(f"settings (defaults: the variables of run_pickaback/{cls.STAGE}.sh)")
    for f, name in cls.variables():
        flags = f.metadata["flags"]
        if not flags or f.name in skip:
            continue
        where = f"{name}={defaults[name]!r}"
        if f.metadata["parse"] is switch:
            group.add_argument(*flags, dest=f.name, action="store_const", const="1", default=None,
                               help=f"{f.metadata['help']} (default {where})")
        else:
            group.add_argument(*flags, dest=f.name, default=None, metavar=name,
                               help=f"{f.metadata['help']} (default {where})")
    return parser


def settings_from(args, cls, **renamed):
    """The settings of `cls` from parsed flags, the script's defaults for the unset ones. `renamed` maps a field to
    the flag destination that sets it in this mode (CPG_MM_main_normal.py --mode prune: --lr is PRUNING_LR)."""
    texts, flags = cls.defaults(), {}
    main_flag = {f.name: f.metadata["flags"][0] for f, _ in cls.variables() if f.metadata["flags"]}
    for f, name in cls.variables():
        dest = renamed.get(f.name, f.name)
        value = getattr(args, dest, None)
        if value is not None:                                     # errors name the flag's main spelling
            texts[name], flags[name] = str(value), main_flag.get(dest, f"--{dest}")
    return cls.parse(texts, flags)


def typed(parse, valid):
    """An argparse type for a flag that is no stage variable: its text read with `parse` and within `valid`
    (argparse then names the flag and the value in one sentence)."""
    def read(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {EXPECTED[parse]}") from None
        if not valid.holds(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {valid.says}")
        return value
    return read


COUNT = typed(int, at_least(0))             # e.g. worker processes
SIZE = typed(int, at_least(1))              # e.g. a batch size
SPARSITY = typed(float, Valid(lambda v: 0 <= v < 1, "a number in [0, 1)"))


def add_task_arguments(parser, expname, dataset_required=True):
    """The flags that name a task and its data, with the original's names."""
    parser.add_argument("--expname", default=expname, help="experiment name (used in log messages)")
    parser.add_argument("--modality", choices=["image", "text"], default=None,
                        help="task modality; taken from the config when omitted, an error if it contradicts it")
    parser.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    parser.add_argument("--dataset", required=dataset_required, help="task (group) name, e.g. group1")
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser):
    parser.add_argument("--data_root", default=None,
                        help="folder the config's relative paths resolve against (default: $MMPAB_DATA_ROOT or data/)")
    parser.add_argument("--workers", type=COUNT, default=0, help="data-loader worker processes")
    parser.add_argument("--val_batch_size", type=SIZE, default=100, help="evaluation batch size")
    parser.add_argument("--force", action="store_true",
                        help="redo the work even when it is finished with the same settings (FORCE=1)")
    parser.add_argument("--tracker", choices=TRACKERS, default=None,
                        help="where the training curves go: tensorboard (logs_perceiver_io/tensorboard/), wandb "
                             "(offline unless WANDB_MODE says otherwise) or none; default: $TRACKER or tensorboard")
    return parser


def entry_run(args, task_ids=None):
    """The run an entry point's flags describe: its config, the work folder ($MMPAB_WORK_DIR or the repository,
    as for the stage scripts), the task (checked against --modality) or `task_ids` ("all": every task), and the
    loader options."""
    cfg = load_dataset_config(args.dataset_config, getattr(args, "data_root", None), check_folders=False)
    if task_ids == "all":
        task_ids = range(1, len(cfg.groups) + 1)
    elif task_ids is None:
        task_ids = [cfg.task_id(args.dataset)]
        if args.modality and args.modality != cfg.modality(args.dataset):
            raise UserError(f"--modality {args.modality} contradicts utils/dataset_config.yaml, where task "
                            f"{args.dataset} of '{cfg.name}' is {cfg.modality(args.dataset)}: drop --modality or fix "
                            f"the config.")
    loader = {"workers": getattr(args, "workers", 0), "val_batch_size": getattr(args, "val_batch_size", 100)}
    tracker = getattr(args, "tracker", None) or tracker_of(os.environ.get("TRACKER"))
    return Run(cfg, work_dir(), list(task_ids), bool(getattr(args, "force", False)), loader, tracker,
               getattr(args, "expname", None))


def parser(doc):
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
