"""A client: one Pick-a-back device, with its own tasks and their data, the networks it holds and what it does when
the coordinator asks (`Client.handle`, one method per message kind).

What it holds, all in its folder (Layout.client: checkpoints_perceiver_io/clients/<cfg>/<client>/):
    baseline/seed<S>/<group>/   the baseline of each of its tasks (the criterion, and the reference of its search)
    round<r>/                   the task it learned in round r: a sequence step (scratch/, gradual_prune/, record.txt,
                                train.log, train.csv, stage.json) in the network it picked; received/ holds the
                                networks it received for that round's search, start.pth.tar the picked network
                                with its input adapter and k/v grafted in when that network read no such input
    client.json                 per round: the task, the network it was learned in (n<r>: first learned in round
                                r), the tasks of that network in order, and the kept checkpoint (that network's
                                version from then on)
    client.log                  what it did, round by round
A network is never changed in place: each round that learns in it keeps a new version, so what a client holds "at
the end of round r" (what its peers search in round r + 1) is always on disk.

What leaves a client: its catalogue (which networks it holds and which of its tasks each answers, no weights); a
network as its checkpoint file's bytes (`models`: every candidate network to a learner; a picked peer network always,
once); with EXCHANGE=profile, a learner's probe (its profiling inputs, derived from its test data, and its input
adapter and k/v projection for a candidate of the other modality) and the DDVs a holder computes on it; accuracies
and counts. Never its data, and no client or the coordinator reads another's data.
"""
import json
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from models.build import Network
from packnet_models_pickaback.kv_transfer import graft_reader, reads
from utils.checkpoint import atomic_write, baseline_accuracy, load_checkpoint, read_json, save_checkpoint
from utils.data import task_dataset
from utils.errors import UserError
from utils.manifest import task_checkpoint
from utils.pipeline.context import Run
from utils.runtime import select_device
from utils.pipeline.lifecycle import failing_task, task_log, write_json
from utils.pipeline.sequence import Evaluation, sequence_step
from utils.pipeline.settings import ClientsSettings
from utils.pipeline.baseline import baseline_task
from utils.clients.plan import client_plans, machine_env, rounds
from utils.clients.protocol import SERVER, Message
from utils_pickaback.candidates import Candidate, Networks, Row, Target, pick, profile_targets, search
from utils_pickaback.modeldiff import DDV, Probe, ProfileSettings, candidate_ddv, similarity

log = logging.getLogger("root")
NEW = "new"                                             # the pick of a new network


@dataclass(frozen=True)
class Pick:
    """The network a learner learns its task in: `holder`'s network `network` (as it stood at the end of the
    previous round), compared through head `head`; None everywhere: a new network."""
    holder: str
    network: str
    head: str

    def text(self):
        return f"{self.holder}:{self.network}:{self.head}"

    @staticmethod
    def text_of(pick):
        """How a pick travels and is recorded: holder:network:head, or "new"."""
        return pick.text() if pick else NEW

    @classmethod
    def of(cls, text):
        return cls(*text.split(":")) if text and text != NEW else None


def tensor_bytes(tensors, metadata=None):
    return save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


class Client:
    """One client of a run: `spec` is the run's (utils/clients/coordinator.py: run_spec), `name` the client's."""

    def __init__(self, spec, name, environ=None):
        import os
        env = machine_env(spec, os.environ if environ is None else environ)
        self.name, self.run_name = name, spec["run"]
        self.run = Run.from_environment(spec["cfg"], env)
        self.s = ClientsSettings.from_environment(env)
        plans = client_plans(self.run, self.s)
        self.plan = {p.name: p for p in plans}.get(name)
        self.where = (f"client {name} {[p.name for p in plans].index(name) + 1}/{len(plans)}" if self.plan else "",
                      rounds(plans))
        if self.plan is None:
            raise UserError(f"client {name} is not one of the run's clients ({', '.join(p.name for p in plans)}): "
                            f"start its SuperNode with one of these names.")
        self.total = max(self.s.total_num_tasks, sum(len(p.tasks) for p in plans))
        self.layout = self.run.layout(self.s.arch)
        self.root = self.layout.client(name, self.run_name)
        self.cfg = self.run.cfg
        self.run.clock.begin_stage(f"clients, client {name}")
        self.evaluation = Evaluation(self.run, self.s)     # this client's tasks' test data, loaded once each
        self.networks = Networks(select_device(self.s.device), None, self.s.amp, open=self.open_network)
        torch.set_num_threads(1)       # the same arithmetic in every engine: one thread per client

    # ---- the message entry point ---------------------------------------------------------------------------------
    def handle(self, request):
        """The reply to one of the coordinator's requests."""
        self.root.mkdir(parents=True, exist_ok=True)
        log.info(f"[{self.where[0]}, round {request.round}/{self.where[1]}] {request.kind}")
        with task_log(self.root / "client.log"), failing_task(self.s.STAGE, f"client {self.name}, round "
                                                                             f"{request.round} ({request.kind})"):
            payload = getattr(self, f"on_{request.kind}")(request.round, request.payload)
        return Message(request.kind, self.name, SERVER, request.round, payload)

    # ---- what it holds --------------------------------------------------------------------------------------------
    @property
    def state_file(self):
        return self.root / "client.json"

    def rounds(self, before):
        """{round: entry of client.json} of the rounds before `before` this client learned a task in."""
        data = read_json(self.state_file) if self.state_file.is_file() else {}
        recorded = data.get("rounds") or {}
        if not isinstance(recorded, dict) or not all(str(r).isdigit() and isinstance(e, dict) and
                                                     {"task", "network", "order", "kept"} <= set(e)
                                                     for r, e in recorded.items()):
            raise UserError(f"{self.state_file} is not a client's record ({{\"rounds\": {{round: {{task, network, "
                            f"order, kept}}}}}}): delete it and rerun; the rounds are redone or found finished.")
        entries = {int(r): e for r, e in recorded.items()      # of this plan only: a round an earlier plan gave is not
                   if int(r) < before and self.plan.task_in(int(r)) == e["task"]}
        expected = [r for r in range(self.plan.start, before) if self.plan.task_in(r)]
        missing = [r for r in expected if r not in entries]
        if missing:
            raise UserError(f"{self.state_file} has no record of round {missing[0]}, which this client learned: "
                            f"rerun the same command (the round is redone, or skipped when it is finished).")
        return entries

    def holdings(self, before):
        """{network id: (kept checkpoint of its latest version, [own task names it answers], [task ids in it])}
        as they stood at the end of round `before` - 1, in the order of their creation."""
        held = {}
        for _, entry in sorted(self.rounds(before).items()):
            heads = held.get(entry["network"], (None, [], []))[1]
            held[entry["network"]] = (self.root / entry["kept"], [*heads, self.cfg.task_name(entry["task"])],
                                      list(entry["order"]))
        return held

    def task(self, round_, request=None):
        t = self.plan.task_in(round_)
        if t is None or (request is not None and int(request) != t):
            raise UserError(f"client {self.name} has no task {request} in round {round_} (its tasks "
                            f"{list(self.plan.tasks)} from round {self.plan.start}): the coordinator and the client "
                            f"disagree on the clients; run both with the same config and variables.")
        return t

    def open_network(self, path, device):
        net = Network.from_checkpoint(self.run.check_checkpoint(path))
        net.model.to(device).eval().requires_grad_(False)
        return net

    # ---- round r, 1: the baseline ---------------------------------------------------------------------------------
    def baseline_folder(self, group):
        return self.layout.client_baseline(self.name, group, self.s.seed)

    def baseline(self, round_):
        """Train the baseline of the round's task, unless it is finished (the learner's first request of the round
        does it: the search compares with it, the learning is measured against it). Returns what every learner's
        reply carries of it: its accuracy and the seconds this request spent on it."""
        t = self.task(round_)
        began = time.time()
        folder = self.baseline_folder(self.cfg.task_name(t)).root
        acc = baseline_task(self.run, self.s.baseline(), t, folder=folder,
                            acc_file=self.layout.client_baseline_acc(self.name, self.s.seed),
                            position=(self.plan.tasks.index(t) + 1, len(self.plan.tasks)))
        return {"baseline_acc": round(float(acc), 4), "seconds_baseline": round(time.time() - began, 3)}

    def criterion(self, group):
        return baseline_accuracy(self.layout.client_baseline_acc(self.name, self.s.seed), group)

    # ---- round r, 2: what it offers, and the search ---------------------------------------------------------------
    def on_catalog(self, round_, payload):
        """The networks it holds at the end of round r - 1 and the tasks of its own each answers: no weights."""
        entries = [{"network": n, "heads": heads, "modalities": [self.cfg.modality(h) for h in heads]}
                   for n, (_, heads, _) in self.holdings(round_).items()]
        return {"catalog": json.dumps(entries)}

    def on_offer(self, round_, payload):
        """EXCHANGE=models: the catalogue and every network in it, as they stood at the end of round r - 1."""
        held = self.holdings(round_)
        return {**self.on_catalog(round_, payload), **{f"network/{n}": path.read_bytes()
                                                        for n, (path, _, _) in held.items()}}

    def on_networks(self, round_, payload):
        """The checkpoint files of the networks asked for, as they stood at the end of round r - 1."""
        held = self.holdings(round_)
        asked = json.loads(payload["networks"])
        unknown = [n for n in asked if n not in held]
        if unknown:
            raise UserError(f"client {self.name} holds no network {unknown[0]} at the end of round {round_ - 1}: "
                            f"the coordinator and the client disagree; rerun the same command.")
        return {f"network/{n}": held[n][0].read_bytes() for n in asked}

    def target(self, round_):
        t = self.task(round_)
        group = self.cfg.task_name(t)
        checkpoint = task_checkpoint(self.baseline_folder(group).root, "the round's baseline comes first")
        return Target(t, checkpoint, partial(task_dataset, self.cfg, group, "test", self.networks.device))

    def profile_settings(self):
        return ProfileSettings(self.s.profile_size, self.s.epsilon, self.s.iterations, self.s.seed)

    def received(self, round_, holder, network):
        return self.layout.client_round(self.name, round_, self.run_name).root / "received" / \
            f"{holder}_{network}.pth.tar"

    def keep_received(self, round_, holder, network, blob):
        """A peer's network, received: written to this round's received/ and checked to be a network of the
        config's model before anything uses it."""
        path = self.received(round_, holder, network)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(blob))
        self.run.check_checkpoint(path)
        return path

    def candidates(self, round_, catalog, files):
        """([Candidate], {(holder, checkpoint): network id}) of a catalogue ({holder: entries}, in the run's client
        order): each (network, head); own networks from this client's files, peers' from `files` ({(holder,
        network): path})."""
        own = self.holdings(round_)
        found, net_of = [], {}
        for holder, entries in catalog.items():
            for entry in entries:
                network = entry["network"]
                path = own[network][0] if holder == self.name else files[holder, network]
                net_of[holder, str(path)] = network
                found += [Candidate(holder, path, head) for head in entry["heads"]]
        return found, net_of

    def on_search(self, round_, payload):
        """EXCHANGE=models: the candidates' networks came with the request; their DDVs are computed here."""
        catalog = json.loads(payload["catalog"])
        files = {}
        for key, blob in payload.items():
            if key.startswith("network/"):
                _, holder, network = key.split("/")
                files[holder, network] = self.keep_received(round_, holder, network, blob)
        baseline, began = self.baseline(round_), time.time()
        candidates, net_of = self.candidates(round_, catalog, files)
        rows = search([self.target(round_)], candidates, self.profile_settings(), self.networks)
        return {**self.decision(round_, rows, began, net_of=net_of), **baseline}

    def on_probe(self, round_, payload):
        """EXCHANGE=profile: the profiling inputs (derived from this client's test data) and its reader, for the
        holders to compute DDVs on; the target's own DDV stays here."""
        baseline = self.baseline(round_)
        profile = profile_targets([self.target(round_)], self.profile_settings(), self.networks)[0]
        probe = profile.probe
        tensors = {"x": probe.inputs["x"], **({"mask": probe.inputs["mask"]} if probe.inputs.get("mask") is not None
                                              else {})}
        folder = self.layout.client_round(self.name, round_, self.run_name).root
        folder.mkdir(parents=True, exist_ok=True)
        blob = tensor_bytes({"cos": profile.ddv.cos, "euc": profile.ddv.euc})
        atomic_write(folder / "profile_ddv.safetensors", lambda f: f.write(blob))
        return {"probe": tensor_bytes(tensors, {"modality": probe.modality}), "reader": tensor_bytes(probe.reader),
                **baseline}

    def on_ddv(self, round_, payload):
        """EXCHANGE=profile, at a holder: the DDV of every head of every network it holds (end of round r - 1) on
        each learner's probe."""
        probes = {key.split("/", 1)[1]: read_probe(blob, payload.get(f"reader/{key.split('/', 1)[1]}"))
                  for key, blob in payload.items() if key.startswith("probe/")}
        held = self.holdings(round_)
        items = [Candidate(self.name, path, head) for _, (path, heads, _) in held.items() for head in heads]
        out = {}
        for i, model in self.networks.heads(items):
            network = next(n for n, (path, _, _) in held.items() if path == items[i].checkpoint)
            for learner, probe in probes.items():
                ddv = candidate_ddv(probe, model)
                out[f"ddv/{learner}/{network}/{model.task}"] = tensor_bytes({"cos": ddv.cos, "euc": ddv.euc})
        return out

    def on_pick(self, round_, payload):
        """EXCHANGE=profile (the holders' DDVs came with the request) or SELECTION=random (the catalogue only): the
        pick."""
        catalog = json.loads(payload["catalog"])
        began = time.time()
        if self.s.selection == "random":
            return self.decision(round_, None, began, catalog)
        folder = self.layout.client_round(self.name, round_, self.run_name).root
        own = load_tensors((folder / "profile_ddv.safetensors").read_bytes())
        target_ddv, target = DDV(own["cos"], own["euc"]), self.target(round_)
        rows, net_of = [], {}
        for holder, entries in catalog.items():
            for entry in entries:
                for head in entry["heads"]:
                    d = load_tensors(payload[f"ddv/{holder}/{entry['network']}/{head}"])
                    net_of[holder, entry["network"]] = entry["network"]
                    rows.append(Row(target, Candidate(holder, entry["network"], head), head,
                                    similarity(target_ddv, DDV(d["cos"], d["euc"]))))
        return self.decision(round_, rows, began, net_of=net_of)

    def decision(self, round_, rows, began, catalog=None, net_of=None):
        """The reply of a search: the pick and every candidate's scores."""
        if rows is None:                                          # random: a seeded draw from the catalogue
            options = [Pick(h, e["network"], head) for h, entries in catalog.items() for e in entries
                       for head in e["heads"]]
            chosen = random.Random(f"{self.s.seed}-{self.name}-{round_}").choice(options) if options else None
            scores = []
        else:
            best = pick(rows, self.s.selection).get(self.task(round_))
            def pick_of(row):
                return Pick(row.candidate.holder, net_of[row.candidate.holder, str(row.candidate.checkpoint)],
                            row.task)
            chosen = None if best is None else pick_of(best)
            scores = [{"candidate": pick_of(r).text(),
                       **{k: round(float(v), 6) for k, v in r.scores.items()}} for r in rows]
            for r in scores:
                log.info(f"client {self.name}, round {round_}: {r['candidate']} similarity (euc) {r['sim_euc']:.5f}")
        log.info(f"client {self.name}, round {round_}: picks {Pick.text_of(chosen)}")
        return {"pick": Pick.text_of(chosen), "scores": json.dumps(scores),
                "seconds": round(time.time() - began, 3)}

    # ---- round r, 3 and 4: learning, then every task evaluated ----------------------------------------------------
    def own_latest(self, round_):
        """The pick of SELECTION=own: the network this client learned its previous task in (None: its first)."""
        entries = self.rounds(round_)
        if not entries:
            return None
        last = entries[max(entries)]
        return Pick(self.name, last["network"], self.cfg.task_name(last["task"]))

    def on_learn(self, round_, payload):
        t = self.task(round_, payload["task"])
        baseline = self.baseline(round_)
        group, began = self.cfg.task_name(t), time.time()
        rule = self.s.selection
        chosen = (self.own_latest(round_) if rule == "own" else None if rule == "scratch"
                  else Pick.of(payload.get("pick", NEW)))
        folder = self.layout.client_round(self.name, round_, self.run_name)
        held = self.holdings(round_)
        if chosen is None:
            network, start, order = f"n{round_:02d}", None, []
        elif chosen.holder == self.name:
            network, (start, _, order) = chosen.network, held[chosen.network]
        else:
            network = f"n{round_:02d}"
            if "network" in payload:
                start = self.keep_received(round_, chosen.holder, chosen.network, payload["network"])
            else:                                                 # models: received with the search
                start = self.received(round_, chosen.holder, chosen.network)
                self.run.check_checkpoint(start)
            order = [self.cfg.task_id(g) for g in Network.from_checkpoint(load_checkpoint(start)).history]
        start = self.with_reader(start, group, folder)
        learned_here = [t2 for t2, n2 in self.task_networks(round_).items() if n2 == network]
        step = sequence_step(self.run, self.s, folder, [*order, t], start, self.criterion(group), self.total,
                             self.evaluation, position=(self.plan.tasks.index(t) + 1, len(self.plan.tasks)),
                             evaluated=[*learned_here, t], label=f"client {self.name}", strict=False)
        self.record(round_, {"task": t, "network": network, "order": [*order, t],
                             "kept": str(Path(step.kept).resolve().relative_to(self.root.resolve())),
                             "pick": Pick.text_of(chosen)})
        accuracies, params = self.evaluate(round_ + 1, step)
        return {"pick": Pick.text_of(chosen), "network": network, "accuracies": json.dumps(accuracies),
                "params": params, "width": float(step.results["width"]), "ratio": str(step.results["ratio"]),
                "seconds": round(time.time() - began, 3), **baseline}

    def task_networks(self, before):
        """{task id: network id} of the tasks this client learned before round `before`."""
        return {e["task"]: e["network"] for _, e in sorted(self.rounds(before).items())}

    def with_reader(self, start, group, folder):
        """The start checkpoint, with this task's input adapter and k/v projection (from its baseline) grafted in
        when no task of the network reads its modality (the k/v transfer of stage 5), as round<r>/start.pth.tar."""
        if start is None:
            return None
        ckpt = load_checkpoint(start)
        if reads(ckpt, self.cfg.modality(group)):
            return start
        source = task_checkpoint(self.baseline_folder(group).root, "the round's baseline comes first")
        log.info(f"client {self.name}: {start.name} reads no {self.cfg.modality(group)} input: grafting {group}'s "
                 f"input adapter and k/v projection from its baseline {source}")
        graft_reader(ckpt, start, source, group)
        out = folder.root / "start.pth.tar"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, out)
        return out

    def record(self, round_, entry):
        """Round `round_` in client.json; later rounds' entries (of an earlier run) are dropped: they are redone."""
        data = read_json(self.state_file) if self.state_file.is_file() else {}
        rounds = {r: e for r, e in (data.get("rounds") or {}).items() if int(r) < round_}
        write_json(self.state_file, {"client": self.name, "rounds": {**rounds, str(round_): entry}})

    def evaluate(self, before, step):
        """({task name: test accuracy} of every task learned before round `before`, each in the latest version of
        the network that learned it; the parameters of the networks this client holds). The network the round's
        `step` (its sequence_step's StepResult) kept was evaluated there: its numbers are taken as they are."""
        accuracies, params = {}, 0
        for path, heads, _ in self.holdings(before).values():
            if path.resolve() == Path(step.kept).resolve():
                params += step.results["params"]
                accuracies.update({head: step.results["accuracies"][head] for head in heads})
                continue
            net = Network.load(path, self.run.model_config)
            params += net.num_parameters()
            for head in heads:
                accuracies[head] = round(self.evaluation(net, head), 4)
        return accuracies, params


def read_probe(blob, reader=None):
    """A learner's probe from its bytes: its inputs, and its reader when it came too (only to a holder with a head
    of the other modality)."""
    tensors = load_tensors(blob)
    return Probe(safe_metadata(blob)["modality"], {"x": tensors["x"], "mask": tensors.get("mask")},
                 load_tensors(reader) if reader is not None else {})


def safe_metadata(blob):
    """The metadata of safetensors bytes (the JSON header's __metadata__)."""
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + size]).get("__metadata__") or {}


def client_from(spec, name):
    """The client `name` of the run `spec` (what an engine's client process builds)."""
    return Client(spec, name)
