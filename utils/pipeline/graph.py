"""The stage graph: every stage of a dataset config, in order, and how each is run (in this process, or its
independent units on one worker per GPUS entry).

    baseline                            an independent model per task: the criterion of every later stage
    wo_backbone                         CPG per task from scratch (widening while below the baseline), then the
                                        gradual-pruning schedule, recording accuracy per sparsity
    select_pruning_ratio_of_backbone    per task, the largest ratio within ALLOW_ACC_LOSS of the baseline
    find_backbone                       per target, the most similar other task's baseline (ModelDiff)
    transfer_kv                         the target's input adapter and k/v projection grafted into its backbone
    w_backbone_MM                       the target trained with CPG on its backbone (widening while below baseline)

Two experiments over these stages' results, compare_selection (the selection rules side by side) and the sequence
order comparison (sequence.sh <cfg> compare), are independent runs too, which spread over GPUS like a stage's
tasks.

Each stage is a function `stage(run, settings)` over the tasks of the run, calling one function per task through
the task lifecycle (utils/pipeline/lifecycle.py); its settings are the variables at the top of
run_pickaback/<stage>.sh (utils/pipeline/settings.py). A stage first checks every input it needs for every task.
Each task is seeded by itself (utils.trainer.begin), so its result never depends on the tasks before it.
"""
import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pandas as pd

from utils.checkpoint import read_json
from utils.errors import UserError
from utils.pipeline import backbone, baseline, experiments, search, sequence, target
from utils.pipeline.choice import select_pruning_ratio_of_backbone
from utils.pipeline.context import Run
from utils.pipeline.executor import Unit, entry_device, gpu_entries, gpus_per_unit, parallel, run_parallel
from utils.pipeline.runlock import holding
from utils.pipeline.settings import RUN_ALL, RUN_VARIABLES, all_variables, stage_settings
from utils.pipeline.transfer import transfer_kv

log = logging.getLogger("root")


@dataclass(frozen=True)
class Stage:
    """A stage: the function that runs it over a run's tasks, and (for stages whose tasks are independent) the
    function that lists its units for parallel workers after checking their inputs."""
    run: Callable
    units: Callable = None


STAGE_FUNCTIONS = {"baseline": Stage(baseline.baseline, baseline.units),
                   "wo_backbone": Stage(backbone.wo_backbone, backbone.units),
                   "select_pruning_ratio_of_backbone": Stage(select_pruning_ratio_of_backbone),
                   "find_backbone": Stage(search.find_backbone, search.units),
                   "transfer_kv": Stage(transfer_kv),
                   "w_backbone_MM": Stage(target.w_backbone_MM, target.units)}
GRAPH = {name: STAGE_FUNCTIONS[name] for name in RUN_ALL}         # run_all's order (utils/pipeline/settings.py)
STAGES = RUN_ALL


@dataclass(frozen=True)
class Experiment:
    """An experiment of independent runs over the stages' results: the stages of the graph it runs first, then its
    functions, each given the run and {stage: settings} of every stage it runs: `runs` lists its runs in order
    ({key: label}, read from the stages' results), `prepare` does what they need first, `run_one(run, settings,
    key)` does one run, `finish` writes what it writes from their records."""
    stages: tuple
    runs: Callable
    prepare: Callable
    run_one: Callable
    finish: Callable


EXPERIMENTS = {"compare_selection": Experiment(RUN_ALL[:4], experiments.trainings, experiments.prepare,
                                               experiments.train, experiments.write_table),
               "sequence_compare": Experiment((), sequence.comparison_runs, sequence.check_comparison,
                                              sequence.comparison_run, sequence.order_comparison_rows)}
PARALLEL_STAGES = (*(name for name, stage in GRAPH.items() if stage.units), *EXPERIMENTS)
UNIT = "MMPAB_UNIT"           # the key of the one run of an experiment that a parallel worker is handed


def summary(run, arch="perceiver_io"):
    """The run's results in a few lines: baseline accuracies, backbone picks, targets against their baselines."""
    layout = run.layout(arch)
    lines = [f"baseline accuracies ({layout.baseline_acc_file}): {json.dumps(read_json(layout.baseline_acc_file))}"]
    if layout.result_csv.is_file():
        picks = pd.read_csv(layout.result_csv)
        lines.append(f"backbone picks ({layout.result_csv}): " +
                     ", ".join(f"{t}->{k}" for t, k in zip(picks.target_id, picks.task_id, strict=True)))
    if layout.target_acc_csv.is_file():
        lines.append(f"targets on their backbones vs baseline ({layout.target_acc_csv}):\n" +
                     pd.read_csv(layout.target_acc_csv).to_string(index=False))
    return "\n".join(lines)


def run_unit(stage, config):
    """The function a worker calls for each unit it is handed (the unit's environment), sent to it by Ray."""
    return partial(run_stage, stage, config)


def settings_of(stage, env):
    """{stage name: its settings} of every stage `stage` runs (`all`: the six of run_all; compare_selection: those
    and its own; sequence_compare: the sequence's), each value checked: what is checked before any work starts."""
    names = STAGES if stage == "all" else (*STAGES, stage) if stage == "compare_selection" else ("sequence",) \
        if stage.startswith("sequence") else (stage,)
    return {name: stage_settings(name, env) for name in names}


def run_stage(stage, config, env=None, engine=None):
    """Run one stage (or `all`, every stage in order, or an experiment: compare_selection, sequence_compare) of a
    dataset config, with the settings of its script(s) and the environment. With two or more GPUS entries, the
    independent units of baseline, wo_backbone, find_backbone, w_backbone_MM and the experiments run in parallel, one
    worker per entry (or on the Ray cluster at RAY_ADDRESS), through `engine` (utils.engines.units.run_units, which
    the commands pass; see utils/pipeline/executor.py); one entry just picks the device. The run holds the folder's
    run lock throughout (utils/pipeline/runlock.py)."""
    env = os.environ if env is None else env
    run = Run.from_environment(config, env)
    entries = gpu_entries(env)
    if env.get("RAY_ADDRESS"):
        gpus_per_unit(env)                                        # checked before any work, like the settings
    if len(entries) == 1:
        env = {**env, "GPUS": "", "DEVICE": entry_device(entries[0])}
    settings = settings_of(stage, env)                            # every value checked before any work
    with holding(run.layout().run_lock, stage):
        return run_stages(run, stage, config, settings, Spread(env, entries, engine))


@dataclass(frozen=True)
class Spread:
    """How a run spreads units: the stage environment, the GPUS entries and the engine (None: run_stage's caller has
    none)."""
    env: dict
    entries: list
    engine: Callable = None

    def parallel(self):
        return parallel(self.env, self.entries)


def run_stages(run, stage, config, settings, spread):
    """The work of run_stage once its settings are checked and the run lock is held."""
    run.clock.begin_stage(stage)
    if stage == "sequence":                                       # one network over a sequence (not in run_all)
        sequence.sequence(run, settings["sequence"])
        return run
    if stage in EXPERIMENTS:
        run_experiment(run, stage, config, settings, spread)
        return run
    for k, (name, s) in enumerate(settings.items(), 1):
        log.info(f"==== stage {k}/{len(settings)} {name} of '{run.cfg.name}' (tasks {run.task_ids})")
        run.clock.begin_stage(name, k, len(settings))
        run_graph_stage(run, name, s, config, spread)
        run.clock.end_stage()
    if stage == "all":
        log.info(summary(run))
        log.info(run.clock.summary())
    return run


def in_parallel(run, name, units, config, spread):
    """Run the units ([Unit]) of stage or experiment `name` on one worker per GPUS entry, each worker calling
    run_stage with the unit's environment."""
    run_parallel(name, units, run_unit(name, config), spread.env, spread.entries, spread.engine,
                 own=all_variables() | set(RUN_VARIABLES),
                 clock=run.clock, folders=(run.work_dir, run.cfg.data_root))


def run_graph_stage(run, name, s, config, spread):
    """Run stage `name` of the graph with settings `s`: its units in parallel with two or more GPUS entries."""
    if spread.parallel() and GRAPH[name].units:
        in_parallel(run, name, GRAPH[name].units(run, s, max(1, len(spread.entries))), config, spread)
    else:
        GRAPH[name].run(run, s)


def run_experiment(run, stage, config, settings, spread):
    """Run the experiment `stage`: the stages it needs (reused when finished), then its runs, each a unit (in
    parallel with two or more GPUS entries), then what it writes from them. A parallel worker (MMPAB_UNIT set) does
    only the run it names."""
    experiment, env = EXPERIMENTS[stage], spread.env
    if env.get(UNIT):
        if env[UNIT] not in experiment.runs(run, settings):
            raise UserError(f"{UNIT}={env[UNIT]!r} names no run of {stage} with these settings: leave {UNIT} unset "
                            f"(it is set only for a parallel worker).")
        experiment.run_one(run, settings, env[UNIT])
        return
    total = len(experiment.stages) + 1
    for k, name in enumerate(experiment.stages, 1):
        log.info(f"==== stage {name} of '{run.cfg.name}' (reused when finished)")
        run.clock.begin_stage(name, k, total)
        run_graph_stage(run, name, settings[name], config, spread)
    experiment.prepare(run, settings)
    run.clock.begin_stage(stage, total, total)
    runs = experiment.runs(run, settings)
    if spread.parallel():
        in_parallel(run, stage, [Unit(label, {UNIT: key}) for key, label in runs.items()], config, spread)
    else:
        for key in runs:
            experiment.run_one(run, settings, key)
    experiment.finish(run, settings)
