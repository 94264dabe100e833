"""Stage 4, find_backbone: per target, score every candidate's baseline with ModelDiff (decision distance vectors)
and pick the backbone (SELECTION). Writes pickaback_<cfg>_result.csv and pickback_<cfg>_table.csv, replacing the
rows of the targets searched, and one manifest entry per target in pickaback_<cfg>_stage.json.
pickaback_perceiverIO.py searches through the same function."""
import logging

from utils.manifest import SearchManifest, file_digest
from utils.pipeline.executor import Unit
from utils.pipeline.lifecycle import Task, failing_task, marked_running, task_data, task_log
from utils.runtime import select_device
from utils_pickaback.backbone_search import plan, run_search, target_ids
from utils_pickaback.modeldiff import ProfileSettings
from utils_pickaback.results import RESULT_COLUMNS, TABLE_COLUMNS, read_rows, write_results

log = logging.getLogger("root")


def search_plan(run, layout, s):
    """(targets, {target: candidates}, {task id: baseline checkpoint}) of the search, every input checked: the
    baselines, and both result CSVs (they must take the new rows before the search runs)."""
    targets = target_ids(run.cfg, s.target_id, "TARGET_ID (--target_id)") if s.target_id != "all" else run.task_ids
    with failing_task(s.STAGE, f"targets {targets}"):
        frames = [read_rows(path, columns, len(run.cfg.groups))
                  for path, columns in ((layout.result_csv, RESULT_COLUMNS), (layout.table_csv, TABLE_COLUMNS))]
        candidates_of, checkpoints = plan(run.cfg, layout, targets, s.candidates)
        for path in checkpoints.values():                         # made with the model the config asks for
            run.check_checkpoint(path)
    return targets, candidates_of, checkpoints, frames


def in_results(frames, target, candidates, picked):
    """Whether the result CSVs still hold what the search of `target` wrote: its pick and a row per candidate."""
    result, table = frames
    rows = table[table.target_id == target]
    return result[result.target_id == target].task_id.tolist() == [picked] and \
        sorted(rows.task_id.tolist()) == sorted(candidates)


def find_backbone(run, s, layout=None, batch_size=32):
    """Search the backbone of every target that is not finished with these settings and models; returns
    {target: picked task id} of the targets searched. `layout` may put the CSVs and the baselines elsewhere (the
    entry point's --out_dir and --checkpoint_root)."""
    layout = layout or run.layout(s.arch)
    targets, candidates_of, checkpoints, frames = search_plan(run, layout, s)
    tasks = {}
    for n, t in enumerate(targets, 1):
        data = task_data(run, s.STAGE, f"target {t}", run.cfg.task_name(t))
        tasks[t] = Task(run, s, f"target {t}", SearchManifest(layout.search_manifest, t),
                        inputs={"candidates": candidates_of[t], "data": data,
                                "models": {k: file_digest(checkpoints[k]) for k in [t, *candidates_of[t]]}},
                        position=(n, len(targets)))
    todo = [t for t in targets
            if not tasks[t].skip(also=in_results(frames, t, candidates_of[t], tasks[t].manifest.results().get(
                "backbone")))]
    if not todo:
        return {}
    # the targets left are searched together (each candidate is loaded once for all of them), so their lifecycle is
    # shared: no entry is removed first (the entries of one JSON file are replaced, under a lock, only once the
    # search has written both CSVs), and each target's entry is written last
    with failing_task(s.STAGE, f"targets {todo}"), task_log(layout.stage_log("find_backbone")), \
            marked_running(tasks[todo[0]].manifest, f"find_backbone targets {todo}"):
        device = select_device(s.device, s.amp)
        profile = ProfileSettings(s.profile_size, s.epsilon, s.iterations, s.seed)
        log.info(f"== find_backbone: '{run.cfg.name}' targets {todo}, candidates {s.candidates}, selection "
                 f"{s.selection}, {profile}, device {device}")
        rows, picks = run_search(run.cfg, {t: candidates_of[t] for t in todo}, checkpoints, profile, s.selection,
                                 device, batch_size, amp=s.amp)
        result, table = write_results(layout.result_csv, layout.table_csv, rows, picks, len(run.cfg.groups))
        for t in todo:
            tasks[t].finish({"result": result, "table": table}, {"backbone": picks[t]}, shared=("result", "table"))
        log.info(f"backbones: {picks}")
    return picks


def units(run, s, workers):
    """The targets split over the workers (round robin): each worker loads every candidate once for its part."""
    targets = search_plan(run, run.layout(s.arch), s)[0]
    parts = [targets[i::workers] for i in range(workers)]
    return [Unit(f"targets {part}", {"TARGET_ID": ",".join(map(str, part))}) for part in parts if part]
