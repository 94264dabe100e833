"""The sequence run: one network learns the tasks of ORDER in turn, as CPG is meant to be used (compacting, picking,
growing over a whole sequence of image and text tasks in one Perceiver IO).

Step j adds task order[j] to the network the previous step kept: the task picks over every earlier task's kept
weights (piggymask), trains the free ones, widens while below its baseline, is compacted along the pruning schedule,
and is kept at the largest ratio within ALLOW_ACC_LOSS of its baseline (the chooser's rule), which frees capacity for
the next task. Each task has its own head; tasks of one modality share its input adapter and k/v projection, and all
share the latents and the latent transformer, every weight under CPG's ownership masks, so nothing an earlier task
owns changes. After each step every task learned so far is evaluated from the kept checkpoint: row j of the
accuracy matrix. Each step is a task of the lifecycle (utils/pipeline/lifecycle.py) whose inputs are the order up to
it and the checkpoint it starts from, so a rerun skips what is finished and a changed ORDER is redone from the first
step that differs. Every number goes to logs_perceiver_io/sequence_<cfg>.csv (one row per step and evaluated task).
The order comparison (sequence.sh <cfg> compare) is independent sequence runs, one per order rule and seed: the
graph's units.
"""
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models import cpg
from models.build import Network
from utils.checkpoint import atomic_write, baseline_accuracy, locked, read_table, update_csv
from utils.data import load_task
from utils.errors import UserError
from utils.manifest import file_digest
from utils.pipeline.compacting import Progress, choose_ratio, remove_stale_stages, train_and_compact
from utils.pipeline.inputs import baseline_checkpoint, first_start, search_table
from utils.pipeline.lifecycle import chosen_lr, failing_task, Task, task_data
from utils.trainer import WIDTH_TOLERANCE, evaluate_task

log = logging.getLogger("root")

COLUMNS = ["run", "rule", "seed", "step", "learned", "task", "position", "accuracy", "baseline_acc", "params",
           "separate_params", "width", "owned", "free", "seconds"]
RULES = ("similar", "config", "random")            # the orders the comparison puts side by side


def sequence_order(run, s, table=None):
    """The task ids in the order the network learns them: ORDER=config (the run's tasks in id order), random
    (shuffled by SEED), similar (from FIRST, next the unlearned task whose baseline is on average most similar to the
    learned ones in the search's table) or a list of ids. A UserError for an unknown or repeated id."""
    ids, where = list(run.task_ids), "in the environment or at the top of run_pickaback/sequence.sh"
    if s.order == "config":
        return ids
    if s.order == "random":
        random.Random(s.seed).shuffle(ids)
        return ids
    if s.order == "similar":
        if s.first not in ids:
            raise UserError(f"FIRST={s.first} is not one of the tasks {ids} of the run: change FIRST {where}.")
        return similar_order(run, s.first, ids, table)
    order = [int(t) for t in s.order.split()]
    unknown = [t for t in order if not 1 <= t <= len(run.cfg.groups)]
    if unknown:
        raise UserError(f"ORDER={s.order!r} names task {unknown[0]}, but config '{run.cfg.name}' has tasks "
                        f"1..{len(run.cfg.groups)}: change ORDER {where}.")
    repeated = sorted({t for t in order if order.count(t) > 1})
    if repeated:
        raise UserError(f"ORDER={s.order!r} names task {repeated[0]} more than once: a task is learned once; "
                        f"change ORDER {where}.")
    return order


def similar_order(run, first, ids, table):
    """From `first`, next the unlearned task whose mean similarity (sim_euc of the search's table, the row of the
    unlearned task as target and a learned one as candidate) to the learned tasks is the largest; ties: lowest id."""
    sim = {(int(r.target_id), int(r.task_id)): float(r.sim_euc) for r in table.itertuples()}
    missing = sorted({t for t in ids for k in ids if t != k and (t, k) not in sim})
    if missing:
        raise UserError(f"the backbone search's table has no row of target(s) {', '.join(map(str, missing))} against "
                        f"every other task: run run_pickaback/find_backbone.sh {run.cfg.name} (CANDIDATES=all) "
                        f"first, or give ORDER as task ids.")
    order, rest = [first], [t for t in ids if t != first]
    while rest:
        best = max(rest, key=lambda t: (sum(sim[t, k] for k in order) / len(order), -t))
        order.append(best)
        rest.remove(best)
    return order


def separate_parameters(run, layout, group):
    """The parameters of the task's separate baseline model."""
    path = baseline_checkpoint(run, layout, group)
    return Network.from_checkpoint(run.check_checkpoint(path), path).num_parameters()


class Evaluation:
    """Test accuracy of tasks from a network; each task's test data is loaded once."""

    def __init__(self, run, s):
        self.run, self.s, self.data = run, s, {}

    def loaded(self, group, train_per_class=0):
        """The task's loaders; `train_per_class` > 0: training on a seeded subset of that many samples per class
        (the test set is the same)."""
        if (group, train_per_class) not in self.data:
            s = self.s
            self.data[group, train_per_class] = load_task(
                self.run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device, num_classes=s.num_classes,
                amp=s.amp, epochs=s.epochs, train_per_class=train_per_class, **self.run.loader)
        return self.data[group, train_per_class]

    def __call__(self, net, group):
        return evaluate_task(net, self.loaded(group))[1]


@dataclass(frozen=True)
class SequencePlan:
    """What a sequence run needs before its first step, every input checked: the task ids in order, each task's
    baseline accuracy and the parameters of its separate baseline model, and the checkpoint the first task starts
    from (None: a new network)."""
    order: list
    criteria: dict
    separate: dict
    start: Path = None


def sequence_plan(run, s):
    """The SequencePlan of a sequence run, every input checked."""
    layout = run.layout(s.arch)
    with failing_task(s.STAGE, f"ORDER={s.order}"):
        read_table(layout.sequence_csv, COLUMNS)                 # it must take the rows of every step
        order = sequence_order(run, s, search_table(run, layout, s))
        criteria, separate = {}, {}
        for t in order:
            group = run.cfg.task_name(t)
            criteria[t] = baseline_accuracy(layout.baseline_acc_file, group)
            separate[t] = separate_parameters(run, layout, group)
        start = first_start(run, layout, order[0]) if s.start == "similar" else None
    return SequencePlan(order, criteria, separate, start)


@dataclass(frozen=True)
class StepResult:
    """What one step of a sequence run leaves: the checkpoint it keeps (the next step's start) and its results as
    its manifest records them (the ratio kept, every learned task's accuracy and owned share, the free share, the
    parameters, the width, the seconds it took)."""
    kept: Path
    results: dict


def sequence_step(run, s, folder, order, start, criterion, total_num_tasks, evaluate=None, position=None,
                  evaluated=None, label=None, strict=True):
    """One step of a sequence run, unless it is finished with these inputs: learn task order[-1] on top of the
    checkpoint `start` (None: a new network) in the TaskFolder `folder`, compact it, keep it at the chooser's ratio,
    evaluate every task of `order` (the tasks learned so far, in order, this one last) from the kept checkpoint and
    finish the step's lifecycle task. `criterion` is the task's baseline accuracy, `total_num_tasks` how many tasks
    the pruning leaves room for, `evaluate` an Evaluation (which keeps each task's test data loaded from one step to
    the next) and `position` (step, steps of the run). `evaluated`: the task ids evaluated (default: all of
    `order`; a client evaluates only its own tasks: it holds no data of the others); `label` names who learns (a
    client) in the log and in errors; `strict`: see kept_network. Returns the step's StepResult."""
    j, t = len(order), order[-1]
    group, position = run.cfg.task_name(t), position or (j, j)
    what = f"step {position[0]}/{position[1]}: task {t} ({group}, {run.cfg.modality(group)})"
    what = f"{label}, {what}" if label else what
    data_settings = task_data(run, s.STAGE, what, group)
    task = Task(run, s, what, folder.manifest,
                inputs={"order": list(order), "start": file_digest(start) if start else None, "baseline": criterion,
                        "data": data_settings, "total_num_tasks": total_num_tasks}, group=group, position=position)
    if not task.skip():
        evaluate = evaluate or Evaluation(run, s)
        with task.working(folder.log):
            data = evaluate.loaded(group, getattr(s, "train_per_class", 0))     # a client's few-shot question
            task.replacing(folder.root)
            began = time.time()
            progress = task.track(Progress(folder.progress, task.identity))
            outputs, record, width = train_and_compact(run, folder, s, data, data_settings, criterion, progress,
                                                       start=start, total_num_tasks=total_num_tasks,
                                                       curves=task.curves())
            remove_stale_stages(folder, outputs)
            key, net, shares = kept_network(run, s, order, outputs, record, width, criterion, strict)
            names = [run.cfg.task_name(i) for i in (order if evaluated is None else evaluated)]
            accuracies = {name: round(evaluate(net, name), 4) for name in names}
            task.finish({**outputs, "kept": outputs[key]},
                        {"ratio": key, "accuracies": accuracies, "params": net.num_parameters(),
                         "width": net.model.width_multiplier, "seconds": round(time.time() - began, 1),
                         "owned": {name: shares.get(net.task_id(name), 0.0) for name in names},
                         "free": shares.get(0, 0.0), **chosen_lr(data)})
            log.info(f"{label + ', ' if label else ''}sequence step {j}: {group} kept at ratio {key}; "
                     f"accuracies {accuracies}; "
                     f"{net.num_parameters()} parameters, width x{net.model.width_multiplier}")
    return StepResult(task.manifest.output("kept"), task.manifest.results())


def kept_network(run, s, order, outputs, record, width, criterion, strict=True):
    """(ratio, network, {task id: share of the weights it owns}) of the pruning stage the step keeps: the largest
    ratio within ALLOW_ACC_LOSS of the baseline (the chooser's rule). When the task found no free weight at the
    maximum width and stays below its baseline: a UserError, or with strict=False (a client's comparison: a rule's
    result, however poor) a warning, and the task kept as it is."""
    t, group = order[-1], run.cfg.task_name(order[-1])
    at_max = width >= s.max_network_width_multiplier - WIDTH_TOLERANCE
    key = choose_ratio(record, criterion, s.allow_acc_loss, at_max) or "0.0"
    net = Network.load(outputs[key])
    shares = cpg.ownership_shares(net.model)
    if at_max and not shares.get(net.task_id(group)) and record[key] + s.allow_acc_loss < criterion:
        if not strict:
            log.warning(f"task {t} ({group}) found no free weight in the network at its maximum width "
                        f"x{s.max_network_width_multiplier} and stays below its baseline ({record[key]} < "
                        f"{criterion}): kept as it is, picking over the network's weights only")
            return key, net, shares
        raise UserError(f"task {t} ({group}) found no free weight in the network at its maximum width "
                        f"x{s.max_network_width_multiplier} and stays below its baseline ({record[key]} "
                        f"< {criterion}): raise MAX_NETWORK_WIDTH_MULTIPLIER in the environment or at "
                        f"the top of run_pickaback/sequence.sh; the {len(order) - 1} task(s) learned before it "
                        f"are kept.")
    return key, net, shares


def sequence(run, s, name="default"):
    """Learn the tasks of ORDER in one network, one step each (sequence_step), and write the run's rows of
    sequence_<cfg>.csv; returns them (a DataFrame)."""
    layout = run.layout(s.arch)
    plan = sequence_plan(run, s)
    order, start = plan.order, plan.start
    total = max(s.total_num_tasks, len(order) + (start is not None))
    log.info(f"==== sequence '{name}' of '{run.cfg.name}': tasks {order} in one network"
             f"{' on ' + str(start) if start else ''}")
    evaluate, previous, rows = Evaluation(run, s), start, []
    keys = {"run": name, "rule": s.order if s.order in RULES else "config", "seed": s.seed}
    for j, t in enumerate(order, 1):
        step = sequence_step(run, s, layout.sequence_step(name, j), order[:j], previous, plan.criteria[t], total,
                             evaluate, position=(j, len(order)))
        previous = step.kept
        rows += step_rows(run, step.results, order, j, plan.criteria, plan.separate, keys)
        record_rows(layout.sequence_csv, name, rows)              # after every step: a stopped run keeps its rows
    final = pd.DataFrame(rows).query(f"step == {len(order)}")[["task", "accuracy", "baseline_acc", "params",
                                                                "separate_params", "width"]]
    log.info(f"{layout.sequence_csv.name}, run '{name}' after its last task:\n{final.to_string(index=False)}")
    return pd.DataFrame(rows, columns=COLUMNS)


def step_rows(run, results, order, j, criteria, separate, keys):
    """The CSV rows of step j: one per task learned so far."""
    learned = run.cfg.task_name(order[j - 1])
    return [{**keys, "step": j, "learned": learned, "task": run.cfg.task_name(t), "position": i,
             "accuracy": results["accuracies"][run.cfg.task_name(t)], "baseline_acc": criteria[t],
             "params": results["params"], "separate_params": sum(separate[k] for k in order[:j]),
             "width": results["width"], "owned": round(results["owned"][run.cfg.task_name(t)], 6),
             "free": round(results["free"], 6), "seconds": results["seconds"]}
            for i, t in enumerate(order[:j], 1)]


def record_rows(path, name, rows):
    """Replace the rows of run `name` in the sequence CSV."""
    update_csv(path, rows, lambda t: t["run"] == name, COLUMNS)


def comparison_orders(settings):
    """{key: (rule, seed)} of the order comparison's runs, in order: the orders similar, config and random, one
    sequence run each per seed of SEEDS; the key is the run's name in sequence_<cfg>.csv."""
    return {f"{rule}_seed{seed}": (rule, seed) for rule in RULES for seed in settings["sequence"].seeds}


def comparison_runs(run, settings):
    """{key: label} of the order comparison's runs, in order: its independent units."""
    return {key: f"ORDER={rule}, SEED={seed}" for key, (rule, seed) in comparison_orders(settings).items()}


def comparison_settings(settings, key):
    """The sequence settings of the comparison's run `key`."""
    rule, seed = comparison_orders(settings)[key]
    return settings["sequence"].replace(order=rule, seed=seed)


def check_comparison(run, settings):
    """Every input of every run of the comparison, checked before the first one trains."""
    for key in comparison_orders(settings):
        sequence_plan(run, comparison_settings(settings, key))


def comparison_run(run, settings, key):
    """The comparison's sequence run `key`."""
    runs = comparison_runs(run, settings)
    log.info(f"==== order comparison {list(runs).index(key) + 1}/{len(runs)}: {runs[key]}")
    sequence(run, comparison_settings(settings, key), name=key)


def order_comparison_rows(run, settings):
    """Put the rows of sequence_<cfg>.csv in the order a run of the comparison after another leaves them (the rows of
    other runs first, then each run of the comparison in turn), whichever order its runs finished in."""
    rank = {key: n for n, key in enumerate(comparison_orders(settings), 1)}
    path = run.layout(settings["sequence"].arch).sequence_csv
    with locked(path):
        table = read_table(path, COLUMNS)
        table = table.iloc[table.run.map(lambda name: rank.get(name, 0)).argsort(kind="stable")]
        text = table.to_csv(index=False, lineterminator="\n")
        atomic_write(path, lambda f: f.write(text.encode()))
