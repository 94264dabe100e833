"""The coordinator: the rounds of a clients run. It holds no data and no network; it only routes requests and
replies, in batches (each a barrier), and writes what it saw.

Round r, for the clients that have an r-th task (the learners):
    catalog   every client that learned a task before r (a holder) says which networks it holds (end of round
              r - 1) and which of its tasks each answers
    search    SELECTION similar or original, EXCHANGE models: every holder sends its catalogue and its networks in
              one message ("offer"), each learner receives its peers' networks (its own it has) and computes their
              DDVs itself ("search"); EXCHANGE profile: "catalog", each learner sends its probe ("probe"), every
              holder answers the DDVs of its heads on every probe ("ddv"), each learner scores them ("pick");
              SELECTION random: "catalog", each learner draws from it ("pick"); own and scratch: no search
    fetch     a learner that picked a peer's network and does not have it yet receives it, whole, once
    learn     each learner learns its task with CPG in the picked network and evaluates every task it has learned
A learner trains its task's baseline (the criterion, and the reference of its search) in its first request of the
round. Round 1, and every round under own or scratch, is one batch: learn.
Everything a round uses is as it stood at the end of round r - 1, so no result depends on which client answers
first. Every message is counted (protocol.payload_bytes: Flower's ConfigRecord count) in
logs_perceiver_io/clients_<cfg>_messages.csv; per round and client, the pick, the candidates' scores, the bytes
sent and received, each phase's seconds and the accuracy of each of its tasks in logs_perceiver_io/clients_<cfg>.csv.
A rerun replays the rounds: the clients skip their finished work and answer as before, so a resumed run writes what
an uninterrupted one does.
"""
import json
import logging
import os
import time

from utils.checkpoint import update_csv
from utils.clients.plan import client_plans, machine_env, rounds
from utils.clients.protocol import SERVER, Message
from utils.pipeline.context import Run, duration
from utils.pipeline.settings import RUN_VARIABLES, SETTINGS, ClientsSettings

log = logging.getLogger("root")

ROW_COLUMNS = ["run", "rule", "exchange", "seed", "round", "client", "learned", "task", "accuracy", "baseline_acc",
               "pick", "network", "scores", "bytes_sent", "bytes_received", "params", "width",
               "seconds_baseline", "seconds_search", "seconds_learn"]
MESSAGE_COLUMNS = ["run", "exchange", "round", "kind", "sender", "receiver", "bytes"]
SPEC_VARIABLES = (*RUN_VARIABLES, "MMPAB_DATA_ROOT", "MMPAB_CONFIG_FILE")


def run_spec(config, env, run="default", **overrides):
    """What every client and the coordinator of a run need, JSON-serialisable: the config's name, the run's name,
    the clients' names and the variables (the clients stage's, the run's; `overrides` replace some, e.g.
    SELECTION)."""
    names = {name for _, name in SETTINGS["clients"].variables()} | set(SPEC_VARIABLES)
    variables = {k: str(v) for k, v in env.items() if k in names}
    variables.update({k: str(v) for k, v in overrides.items()})
    s = ClientsSettings.from_environment(variables)
    plans = client_plans(Run.from_environment(config, variables), s)
    return {"cfg": config, "run": run, "env": variables, "clients": [p.name for p in plans]}


class Coordinator:
    """The rounds of one run over an Engine (protocol.Engine)."""

    def __init__(self, spec, engine):
        self.engine, self.name = engine, spec["run"]
        env = machine_env(spec, os.environ)
        self.run = Run.from_environment(spec["cfg"], env)
        self.s = ClientsSettings.from_environment(env)
        self.plans = client_plans(self.run, self.s)
        self.layout = self.run.layout(self.s.arch)
        self.messages, self.rows, self.round = [], [], 0
        self.criteria = {}                  # {(client, task id): its baseline accuracy}, from the learn replies
        self.began, self.round_times = time.monotonic(), []

    # ---- sending ---------------------------------------------------------------------------------------------------
    def send(self, kind, payloads):
        """{client: reply payload} of a batch of requests of `kind` ({client: request payload}), each request and
        reply counted."""
        if not payloads:
            return {}
        log.info(f"[round {self.round}/{self.total}] {kind}: {len(payloads)} of {len(self.plans)} clients "
                 f"({', '.join(payloads)}); {self.progress()}")
        requests = [Message(kind, SERVER, c, self.round, p) for c, p in payloads.items()]
        replies = self.engine.send(requests)
        for message in (*requests, *replies):
            self.messages.append({"run": self.name, "exchange": self.s.exchange, "round": self.round,
                                  "kind": message.kind, "sender": message.sender, "receiver": message.receiver,
                                  "bytes": message.size})
        return {m.sender: m.payload for m in replies}

    def progress(self):
        """Time so far and, from the rounds finished in this run, an estimate of the time left."""
        so_far = duration(time.monotonic() - self.began)
        if not self.round_times:
            return f"{so_far} so far"
        left = sum(self.round_times) / len(self.round_times) * (self.total - self.round + 1)
        return f"{so_far} so far, about {duration(left)} left"

    # ---- the rounds ------------------------------------------------------------------------------------------------
    @property
    def total(self):
        return rounds(self.plans)

    def __call__(self):
        s = self.s
        log.info(f"==== clients '{self.name}' of '{self.run.cfg.name}': {len(self.plans)} clients, {self.total} "
                 f"rounds, SELECTION={s.selection}, EXCHANGE={s.exchange}, ENGINE={s.engine}, SEED={s.seed}")
        for r in range(1, self.total + 1):
            self.round, began = r, time.monotonic()
            self.play_round(r)
            self.round_times.append(time.monotonic() - began)
            self.write()
        log.info(f"clients '{self.name}': {self.total} rounds in {duration(time.monotonic() - self.began)}; "
                 f"{sum(m['bytes'] for m in self.messages)} bytes in {len(self.messages)} messages; "
                 f"{self.layout.clients_csv}, {self.layout.clients_messages_csv}")

    def play_round(self, r):
        learners = {p.name: p.task_in(r) for p in self.plans if p.task_in(r)}
        if not learners:
            log.info(f"[round {r}/{self.total}] no client has a task in this round")
            return
        holders = [p.name for p in self.plans if p.learned_before(r)]
        replies = self.search(r, learners, holders)
        fetched = self.fetch(learners, {c: reply["pick"] for c, reply in replies.items()})
        learned = self.send("learn", {c: {"task": t, "pick": replies.get(c, {}).get("pick", "new"),
                                          **fetched.get(c, {})} for c, t in learners.items()})
        self.rows += self.round_rows(r, learners, replies, learned)

    def search(self, r, learners, holders):
        """{learner: its reply to the search (pick, scores, seconds; the baseline's accuracy and seconds when it
        trained it there)} of the round's search; {} when the rule searches nothing."""
        rule = self.s.selection
        if rule in ("own", "scratch") or not holders:
            return {}
        if rule != "random" and self.s.exchange == "models":    # the catalogue and the networks in one message
            offers = self.send("offer", {h: {} for h in holders})
            text = json.dumps({h: json.loads(offers[h]["catalog"]) for h in holders})
            return self.send("search", {c: {"catalog": text, **{f"network/{h}/{key.split('/')[1]}": blob
                                                                for h in holders if h != c
                                                                for key, blob in offers[h].items()
                                                                if key.startswith("network/")}}
                                        for c in learners})
        catalogs = self.send("catalog", {h: {} for h in holders})
        catalog = {h: json.loads(catalogs[h]["catalog"]) for h in holders}
        text = json.dumps(catalog)
        if rule == "random":
            return self.send("pick", {c: {"catalog": text} for c in learners})
        probes = self.send("probe", {c: {} for c in learners})
        ddvs = self.send("ddv", {h: self.probes_for(h, catalog[h], learners, probes) for h in holders})
        replies = self.send("pick", {c: {"catalog": text, **{f"ddv/{h}/{key.split('/', 2)[2]}": blob
                                                             for h in holders for key, blob in ddvs[h].items()
                                                             if key.split("/")[1] == c}}
                                     for c in learners})
        for c in learners:                                       # the baseline was trained for the probe
            replies[c] = {**probes[c], **replies[c]}
        return replies

    def probes_for(self, holder, entries, learners, probes):
        """What a holder receives of the learners' probes: the inputs, and a learner's reader (input adapter and
        k/v projection) only when the holder has a head of another modality than the learner's task."""
        payload = {}
        for c, t in learners.items():
            payload[f"probe/{c}"] = probes[c]["probe"]
            modality = self.run.cfg.modality(self.run.cfg.task_name(t))
            if any(m != modality for e in entries for m in e["modalities"]):
                payload[f"reader/{c}"] = probes[c]["reader"]
        return payload

    def fetch(self, learners, picks):
        """{learner: {"network": bytes}} for each learner whose pick is a peer's network it does not hold yet."""
        if self.s.exchange == "models" and self.s.selection != "random":      # received with the search
            return {}
        wanted = {}
        for c, text in picks.items():
            holder, network = text.split(":")[:2] if text != "new" else (None, None)
            if holder and holder != c:
                wanted.setdefault(holder, []).append((c, network))
        if not wanted:
            return {}
        replies = self.send("networks", {h: {"networks": json.dumps(sorted({n for _, n in asks}))}
                                         for h, asks in wanted.items()})
        return {c: {"network": replies[h][f"network/{n}"]} for h, asks in wanted.items() for c, n in asks}

    # ---- what it writes --------------------------------------------------------------------------------------------
    def round_rows(self, r, learners, searched, learned):
        """One row per learner of round r and task it has learned so far."""
        rows = []
        for c, t in learners.items():
            reply, search = learned[c], searched.get(c, {})
            sent = sum(m["bytes"] for m in self.messages if m["round"] == r and m["sender"] == c)
            received = sum(m["bytes"] for m in self.messages if m["round"] == r and m["receiver"] == c)
            self.criteria[c, t] = reply["baseline_acc"]
            criteria = {self.run.cfg.task_name(k): v for (holder, k), v in self.criteria.items() if holder == c}
            for task, acc in json.loads(reply["accuracies"]).items():
                rows.append({"run": self.name, "rule": self.s.selection, "exchange": self.s.exchange,
                             "seed": self.s.seed, "round": r, "client": c, "learned": self.run.cfg.task_name(t),
                             "task": task, "accuracy": acc, "baseline_acc": criteria.get(task),
                             "pick": reply["pick"], "network": reply["network"],
                             "scores": search.get("scores", "[]"), "bytes_sent": sent,
                             "bytes_received": received, "params": reply["params"], "width": reply["width"],
                             "seconds_baseline": round(search.get("seconds_baseline", 0.0)
                                                       + reply["seconds_baseline"], 3),
                             "seconds_search": search.get("seconds", 0.0), "seconds_learn": reply["seconds"]})
        return rows

    def write(self):
        """The run's rows of both CSVs, replaced (after every round: a stopped run keeps what it did)."""
        name, exchange = self.name, self.s.exchange
        update_csv(self.layout.clients_csv, self.rows,
                   lambda t: (t["run"] == name) & (t["exchange"] == exchange), ROW_COLUMNS)
        update_csv(self.layout.clients_messages_csv, self.messages,
                   lambda t: (t["run"] == name) & (t["exchange"] == exchange), MESSAGE_COLUMNS)


def coordinate(spec, engine):
    """Run every round of the run `spec` over `engine` (the function Flower's ServerApp calls)."""
    Coordinator(spec, engine)()
