"""Where a clients run stands, read from the clients' folders alone (tools/status.py): for each client and each of
its tasks, the baseline and the round that learns it, each finished (with its accuracy, or the pick's kept ratio
and accuracies), running, resumable, interrupted or not started, as utils/pipeline/status.py says of a stage's
tasks. Nothing is trained, locked or written."""
import json

from utils.checkpoint import read_json
from utils.clients.plan import client_plans
from utils.errors import UserError
from utils.manifest import Manifest
from utils.pipeline.settings import stage_settings
from utils.pipeline.status import epochs, state_of


def declares_clients(run, env):
    """Whether the run has clients to report: the config declares them, or NUM_CLIENTS deals its tasks."""
    return bool(run.cfg.raw.get("clients")) or str(env.get("NUM_CLIENTS") or "0").strip() not in ("", "0")


def client_states(run, env, name="default"):
    """[TaskState] of every client's baselines and rounds of the run `name` ("default" or a comparison run)."""
    s = stage_settings("clients", env)
    layout = run.layout(s.arch)
    baseline = s.baseline()
    states = []
    for plan in client_plans(run, s):
        picks = picks_of(layout.client(plan.name, name) / "client.json")
        for k, t in enumerate(plan.tasks):
            group, r = run.cfg.task_name(t), plan.start + k
            folder = layout.client_baseline(plan.name, group, s.seed)
            states.append(state_of(s.STAGE, f"{plan.name} baseline of task {t} ({group})", Manifest(folder.manifest),
                                   baseline, lambda res: f"accuracy {res.get('accuracy')}", [folder.resume],
                                   epochs_of=epochs(baseline, baseline="finetune_epochs")))
            folder = layout.client_round(plan.name, r, name)
            pick = picks.get(str(r), "new")
            pick = "a new network" if pick in ("", "new") else pick
            states.append(state_of(s.STAGE, f"{plan.name} round {r}: task {t} ({group})", Manifest(folder.manifest), s,
                                   lambda res, pick=pick: f"on {pick}, kept at ratio "
                                                          f"{res.get('ratio')}, accuracies "
                                                          f"{json.dumps(res.get('accuracies'))}",
                                   folder.step_resumes(), folder.progress, epochs(s, prune="nr_epoch_for_each_prune")))
    return states


def picks_of(path):
    """{round: pick} of a client's client.json ({} when it has none or it cannot be read)."""
    try:
        data = read_json(path) if path.is_file() else {}
    except UserError:
        return {}
    return {r: e.get("pick", "") for r, e in (data.get("rounds") or {}).items() if isinstance(e, dict)}
