"""Print a task's name (as the original), or the number of tasks, or a task's modality, for the stage scripts.

    python tools/get_dataset_name.py oxford 7               -> group7
    python tools/get_dataset_name.py oxford 7 --modality    -> text
    python tools/get_dataset_name.py oxford --num_tasks     -> 12
    python tools/get_dataset_name.py oxford group7 --task_id -> 7
"""
import argparse

from utils.config import load_dataset_config
from utils.errors import UserError, report_user_errors


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_config", help="section of utils/dataset_config.yaml")
    p.add_argument("task", nargs="?", help="task id (1-based), or a task name with --task_id")
    p.add_argument("--num_tasks", action="store_true", help="print the number of tasks of the config")
    p.add_argument("--modality", action="store_true", help="print the task's modality (image or text)")
    p.add_argument("--task_id", action="store_true", help="print the id of the task named TASK")
    p.add_argument("--check_data", action="store_true",
                   help="exit 1 with one sentence if the task's (or every task's) data folders are missing")
    args = p.parse_args(argv)
    cfg = load_dataset_config(args.dataset_config, check_folders=False)
    if args.num_tasks:
        print(len(cfg.groups))
        return
    if args.check_data and args.task is None:
        for group in cfg.groups:
            cfg.check_task_data(group)
        return
    if args.task is None:
        raise UserError("give a task id (or name with --task_id), or --num_tasks.")
    name = args.task if args.task_id else cfg.task_name(args.task) if args.task.isdigit() else None
    if name is None:
        raise UserError(f"task '{args.task}' is not a task id: give a number 1..{len(cfg.groups)} or use --task_id.")
    if args.check_data:
        cfg.check_task_data(name)
    elif args.task_id:
        print(cfg.task_id(name))
    elif args.modality:
        print(cfg.modality(name))
    else:
        print(name)


if __name__ == "__main__":
    main()
