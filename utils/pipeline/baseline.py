"""Stage 1, baseline: an independent single-task model per task (the PackNet-style baseline). Its last-epoch test
accuracy, in logs_perceiver_io/baseline_<cfg>_acc.txt ({"<group>": "0.xxxx"}), is the criterion of every later
stage, and its checkpoint is what the backbone search compares. packnet_main_normal.py trains one task through the
same function."""
import logging

from packnet_models import baseline_network
from utils.checkpoint import read_json, update_json
from utils.data import load_task
from utils.layout import TaskFolder
from utils.pipeline.executor import Unit
from utils.pipeline.lifecycle import chosen_lr, Task, task_data
from utils.trainer import begin, finish_task, save_task_checkpoint, train_baseline

log = logging.getLogger("root")


def check_inputs(acc_file):
    read_json(acc_file)                                           # a broken accuracy file stops us before training


def baseline_task(run, s, task_id, folder=None, acc_file=None, log_path=None, position=(1, 1)):
    """Train task `task_id` into `folder` (default: the layout's) and put its accuracy in `acc_file`, unless it is
    finished with these settings and data. Returns its accuracy."""
    layout = run.layout(s.arch)
    group = run.cfg.task_name(task_id)
    folder = TaskFolder(folder) if folder else layout.baseline(group)
    acc_file = acc_file or layout.baseline_acc_file
    what = f"task {task_id} ({group})"
    task = Task(run, s, what, folder.manifest, inputs={"data": task_data(run, s.STAGE, what, group)}, group=group,
                position=position)
    recorded = task.manifest.results().get("accuracy")
    if task.skip(also=recorded is not None and (read_json(acc_file) or {}).get(group) == recorded):
        return float(recorded)
    log.info(f"== baseline: {run.cfg.name} task {task_id} ({group}, {run.cfg.modality(group)})")
    with task.working(log_path or folder.log):
        data = load_task(run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device,
                         num_classes=s.num_classes, amp=s.amp, epochs=s.finetune_epochs, **run.loader)
        begin(data, s.seed)                                       # the initial weights depend on the seed only
        net = baseline_network(run.cfg, data)
        task.replacing(folder.root)
        acc = train_baseline(net, data, epochs=s.finetune_epochs, lr=s.init_lr, weight_decay=s.weight_decay,
                             seed=s.seed, recipe=s.recipe, resume=task.resume(folder.resume),
                             curves=task.curves())
        finish_task(net, group)
        path = save_task_checkpoint(net, run.cfg, folder.root, s.finetune_epochs)
        update_json(acc_file, {group: "%.4f" % acc})
        task.finish({"checkpoint": path}, {"accuracy": "%.4f" % acc, **chosen_lr(data)})
        log.info(f"saved {path}; {acc_file.name}[{group}] = {acc:.4f}")
    return acc


def baseline(run, s):
    """Train an independent single-task model per task of the run."""
    check_inputs(run.layout(s.arch).baseline_acc_file)
    for n, (task_id, _) in enumerate(run.tasks(), 1):
        baseline_task(run, s, task_id, position=(n, len(run.task_ids)))


def units(run, s, workers):
    """The stage's independent units for parallel workers, after checking its inputs."""
    check_inputs(run.layout(s.arch).baseline_acc_file)
    return [Unit(f"task {t} ({group})", {"TASK_IDS": str(t)}) for t, group in run.tasks()]
