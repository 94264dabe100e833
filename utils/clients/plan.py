"""Who the clients are: each a name, its tasks in the order it learns them (ids of the config's tasks, any modality)
and the round of its first task. From the config's `clients:` section:

    clients:
      - {name: alice, tasks: [1, 7]}
      - {name: dave, tasks: [4, 6], start: 2}    # joins in round 2: its first task can borrow from round 1

or, with NUM_CLIENTS=n, the run's tasks dealt round-robin to n clients named client1..clientn, all starting in
round 1. In round r a client learns its (r - start + 1)-th task, if it has one.
"""
import re
from dataclasses import dataclass

from utils.errors import UserError

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
MACHINE_VARIABLES = ("MMPAB_WORK_DIR", "MMPAB_DATA_ROOT")   # where a machine keeps its files: its own say


def machine_env(spec, environ):
    """The variables a process of the run `spec` (a client, or the coordinator) runs with: the run's (spec["env"]),
    except where its machine keeps its files, when its own environment `environ` says so (a SuperNode or the
    SuperLink on another machine)."""
    return {**spec["env"], **{k: environ[k] for k in MACHINE_VARIABLES if environ.get(k)}}


@dataclass(frozen=True)
class ClientPlan:
    name: str
    tasks: tuple
    start: int = 1

    def task_in(self, round_):
        """The task id the client learns in round `round_`, or None."""
        i = round_ - self.start
        return self.tasks[i] if 0 <= i < len(self.tasks) else None

    def learned_before(self, round_):
        """The task ids the client has learned before round `round_`, in order."""
        return self.tasks[:max(round_ - self.start, 0)]

    @property
    def last_round(self):
        return self.start + len(self.tasks) - 1


def rounds(plans):
    """How many rounds a run of these clients takes."""
    return max(p.last_round for p in plans)


def client_plans(run, s):
    """[ClientPlan] of the run: the config's clients, or with NUM_CLIENTS=n its tasks (TASK_IDS) dealt round-robin;
    every entry checked, a UserError naming what to change otherwise."""
    cfg, where = run.cfg, f"the clients: section of config '{run.cfg.name}' (utils/dataset_config.yaml)"
    if s.num_clients:
        ids = list(run.task_ids)
        if s.num_clients > len(ids):
            raise UserError(f"NUM_CLIENTS={s.num_clients} leaves client(s) without a task: config '{cfg.name}' has "
                            f"{len(ids)} task(s) to deal; set NUM_CLIENTS to at most {len(ids)}.")
        return [ClientPlan(f"client{i + 1}", tuple(ids[i::s.num_clients])) for i in range(s.num_clients)]
    entries = cfg.raw.get("clients")
    if not entries:
        raise UserError(f"config '{cfg.name}' declares no clients: add a clients: section to it (README, "
                        f"\"Clients\") or set NUM_CLIENTS=n to deal its tasks to n clients.")
    if not isinstance(entries, list):
        raise UserError(f"{where} must be a list of clients, each {{name: ..., tasks: [...]}}: fix it.")
    plans, owner = [], {}
    for n, entry in enumerate(entries, 1):
        plans.append(client_entry(cfg, entry, n, where))
        for t in plans[-1].tasks:
            if t in owner:
                raise UserError(f"task {t} ({cfg.task_name(t)}) is on two clients, {owner[t]} and {plans[-1].name}, in "
                                f"{where}: a task's data belongs to one client; remove it from one of them.")
            owner[t] = plans[-1].name
    names = [p.name for p in plans]
    twice = sorted({x for x in names if names.count(x) > 1})
    if twice:
        raise UserError(f"client name {twice[0]!r} is used twice in {where}: give every client its own name.")
    return plans


def client_entry(cfg, entry, n, where):
    """The ClientPlan of the n-th entry of the clients: section, checked."""
    if not isinstance(entry, dict) or set(entry) - {"name", "tasks", "start"}:
        raise UserError(f"entry {n} of {where} must be {{name: ..., tasks: [task ids], start: round}} (start "
                        f"optional), not {entry!r}: fix it.")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"entry {n} of {where} has name {name!r}: give a name of letters, digits, _ or - that starts "
                        f"with a letter (at most 40 characters).")
    tasks = entry.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"client {name} in {where} has no tasks: give it a list of task ids (tasks: [1, 5]) or "
                        f"remove it.")
    for t in tasks:
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= len(cfg.groups):
            raise UserError(f"client {name} in {where} names task {t!r}, but config '{cfg.name}' has tasks "
                            f"1..{len(cfg.groups)}: use their ids.")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"client {name} in {where} lists a task twice: a task is learned once.")
    start = entry.get("start", 1)
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise UserError(f"client {name} in {where} has start {start!r}: give the round of its first task, a whole "
                        f"number >= 1.")
    return ClientPlan(name, tuple(tasks), start)
