"""Clients (Pick-a-back's devices): on the local engine every client learns its tasks in rounds, borrowing from its
peers, without forgetting; both exchange protocols pick the same networks; a client reads only its own data; a run
killed in the middle continues to the same results; bad clients and settings stop with one sentence. Flower's
simulation and a real deployment (SuperLink and SuperNode processes on 127.0.0.1) give the local engine's picks,
bytes and bit-identical checkpoints."""
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY, built_once, demo_config_file, run_killed
from utils.clients.coordinator import run_spec
from utils.clients.local import run_local
from utils.clients.plan import client_plans
from utils.engines import flower
from utils.engines.run import run_clients
from utils.errors import UserError
from utils.pipeline.context import Run
from utils.pipeline.settings import ClientsSettings

CLIENTS = {"alice": [1, 7], "bob": [3, 5], "carol": [2, 8], "dave": [4, 6]}
TIMES = ["seconds_baseline", "seconds_search", "seconds_learn"]


def clients_env(demo_root, work, **extra):
    return {**TINY, "TRACKER": "none", "MMPAB_DATA_ROOT": str(demo_root), "MMPAB_WORK_DIR": str(work), **extra}


def local_run(monkeypatch, env, environs=None):
    for k in ("MMPAB_DATA_ROOT", "MMPAB_WORK_DIR"):
        monkeypatch.setenv(k, env[k])
    run_local(run_spec("demo", env), environs)


def kept_digests(work):
    """{client/roundNN: sha256 of the checkpoint the round kept} of a run's clients."""
    found = {}
    for state in sorted(Path(work, "checkpoints_perceiver_io", "clients", "demo").glob("*/client.json")):
        for r, entry in json.loads(state.read_text())["rounds"].items():
            path = state.parent / entry["kept"]
            found[f"{state.parent.name}/{r}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def results(work):
    frame = pd.read_csv(Path(work, "logs_perceiver_io", "clients_demo.csv"))
    return frame.drop(columns=TIMES).sort_values(["exchange", "round", "client", "task"]).reset_index(drop=True)


@pytest.fixture(scope="session")
def reference(demo_root, tmp_path_factory):
    """The demo's four clients, an uninterrupted tiny run (SELECTION=similar, EXCHANGE=models) on the local engine,
    built once per test run (built_once: the xdist workers share it). Tests must not change it: copy it first."""
    def build(work):
        with pytest.MonkeyPatch.context() as mp:
            local_run(mp, clients_env(demo_root, work))
    return built_once(tmp_path_factory, "clients_reference", build)


def test_every_client_learns_its_tasks_in_rounds_without_forgetting(reference):
    frame = results(reference)
    learned = frame[frame.learned == frame.task]
    assert {(c, t) for c, t in zip(learned.client, learned.task, strict=True)} == \
        {(c, f"group{t}") for c, ts in CLIENTS.items() for t in ts}
    assert sorted(learned[learned.client == "dave"]["round"]) == [2, 3]               # dave joins in round 2
    # a task answers bit-identically in every later round: forgetting is exactly 0
    for (client, task), rows in frame.groupby(["client", "task"]):
        assert rows.accuracy.nunique() == 1, (client, task, rows.accuracy.tolist())
    # from round 2 on every learner searches what the others held at the end of the round before, and picks one
    later = learned[learned["round"] > 1]
    assert (later.pick != "new").all()
    for _, row in later.iterrows():
        candidates = {s["candidate"] for s in json.loads(row.scores)}
        holders = {c.split(":")[0] for c in candidates}
        started = {c for c, ts in CLIENTS.items() if c != "dave" or row["round"] > 2}
        assert holders == started and row.pick in candidates
    messages = pd.read_csv(Path(reference, "logs_perceiver_io", "clients_demo_messages.csv"))
    assert set(messages.kind) == {"offer", "search", "learn"}
    assert set(messages[messages["round"] == 1].kind) == {"learn"}                   # nobody holds a network yet
    for (r, c), rows in frame.groupby(["round", "client"]):     # bytes per round and client: its messages
        assert rows.bytes_received.iloc[0] == messages[(messages["round"] == r) & (messages.receiver == c)].bytes.sum()


def test_the_profile_protocol_picks_the_same_networks(reference, tmp_path, monkeypatch, demo_root):
    work = Path(shutil.copytree(reference, tmp_path / "work"))
    before = kept_digests(work)
    local_run(monkeypatch, clients_env(demo_root, work, EXCHANGE="profile"))
    frame = results(work)
    models, profile = (frame[frame.exchange == e].drop(columns=["exchange", "bytes_sent", "bytes_received"])
                       .reset_index(drop=True) for e in ("models", "profile"))
    pd.testing.assert_frame_equal(models, profile)                # same picks, scores, accuracies
    assert kept_digests(work) == before                           # the same networks: nothing was relearned
    messages = pd.read_csv(work / "logs_perceiver_io" / "clients_demo_messages.csv")
    assert {"probe", "ddv", "pick"} <= set(messages[messages.exchange == "profile"].kind)
    assert "search" not in set(messages[messages.exchange == "profile"].kind)


def own_data_roots(demo_root, tmp_path):
    """{client: environment whose data root holds only that client's tasks}."""
    environs = {}
    for client, tasks in CLIENTS.items():
        root = tmp_path / f"data_{client}"
        for t in tasks:
            modality = "image" if t <= 4 else "text"
            for split in ("train", "test"):
                src = Path(demo_root, "demo", modality, split, f"group{t}")
                shutil.copytree(src, root / "demo" / modality / split / f"group{t}")
        environs[client] = {"MMPAB_DATA_ROOT": str(root)}
    return environs


def test_a_killed_run_continues_to_the_same_results_each_client_on_its_own_data(reference, tmp_path, monkeypatch,
                                                                                demo_root):
    """Each client sees a data root holding only its own tasks (a read of a peer's data would fail), and the run is
    killed in round 2 in the middle of a pruning stage; the rerun ends where the uninterrupted one did."""
    work, environs = tmp_path / "work", own_data_roots(demo_root, tmp_path)
    env = clients_env(demo_root, work)
    monkeypatch.setenv("MMPAB_WORK_DIR", str(work))
    spec = run_spec("demo", env)
    log = run_killed(lambda: run_local(spec, environs),
                     lambda path, phase, epoch: "round02" in str(path) and phase["kind"] == "prune",
                     tmp_path / "killed.log")
    assert "[round 2/3] learn" in log and "[round 3/3]" not in log
    run_local(spec, environs)
    pd.testing.assert_frame_equal(results(work), results(reference))
    assert kept_digests(work) == kept_digests(reference)


def plans_of(tmp_path, monkeypatch, clients=None, **env):
    if clients is not None:
        monkeypatch.setenv("MMPAB_CONFIG_FILE", str(demo_config_file(tmp_path, clients=clients)))
    return client_plans(Run.from_environment("demo", env), ClientsSettings.from_environment(env))


def test_num_clients_deals_the_tasks_round_robin(tmp_path, monkeypatch):
    plans = plans_of(tmp_path, monkeypatch, NUM_CLIENTS="3")
    assert [(p.name, p.tasks, p.start) for p in plans] == [("client1", (1, 4, 7), 1), ("client2", (2, 5, 8), 1),
                                                            ("client3", (3, 6), 1)]
    demo = plans_of(tmp_path, monkeypatch)
    assert {p.name: list(p.tasks) for p in demo} == CLIENTS and [p.start for p in demo] == [1, 1, 1, 2]


@pytest.mark.parametrize("clients, env, words", [
    ([{"name": "a", "tasks": [1, 9]}], {}, ["client a", "task 9", "1..8"]),
    ([{"name": "a", "tasks": [1]}, {"name": "b", "tasks": [2, 1]}], {}, ["task 1", "two clients", "a and b"]),
    ([{"name": "a", "tasks": []}], {}, ["client a", "no tasks"]),
    ([{"name": "a", "tasks": [1]}, {"name": "a", "tasks": [2]}], {}, ["'a'", "twice"]),
    ([{"name": "a", "tasks": [1], "start": 0}], {}, ["start 0", ">= 1"]),
    (None, {"NUM_CLIENTS": "9"}, ["NUM_CLIENTS=9", "at most 8"]),
])
def test_bad_clients_stop_with_one_sentence(tmp_path, monkeypatch, clients, env, words):
    with pytest.raises(UserError) as e:
        plans_of(tmp_path, monkeypatch, clients, **env)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("variable, value", [("EXCHANGE", "gossip"), ("ENGINE", "grpc"), ("SELECTION", "best"),
                                             ("SUPERLINK", "not an address")])
def test_bad_settings_stop_with_one_sentence(variable, value):
    with pytest.raises(UserError) as e:
        ClientsSettings.from_environment({variable: value})
    assert f"{variable}={value!r}" in str(e.value) and "run_pickaback/clients.sh" in str(e.value)


def test_status_says_where_every_client_stands(reference, monkeypatch, capsys, demo_root):
    from tools import status
    for k, v in clients_env(demo_root, reference).items():
        monkeypatch.setenv(k, v)
    assert status.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "clients: 16 finished" in out
    assert "dave round 3: task 6 (group6)" in out and "alice baseline of task 7 (group7)" in out
    assert "alice round 1: task 1 (group1)     finished     on a new network, kept at ratio" in out
    monkeypatch.setenv("EPOCHS", "3")                      # a rerun with other settings would redo every round
    status.main(["demo"])
    assert "8 would be redone" in capsys.readouterr().out


def messages_of(work):
    return pd.read_csv(Path(work, "logs_perceiver_io", "clients_demo_messages.csv"))


def same_as_local(engine, clients, tmp_path, monkeypatch, demo_root):
    """Run `clients` on the local engine and on `engine` (run_clients, as clients.sh does), each in its own folder,
    check that both wrote the same rows, messages and kept checkpoints, and return the engine's rows."""
    local, other = tmp_path / "local", tmp_path / engine
    local_run(monkeypatch, clients_env(demo_root, local, **clients))
    monkeypatch.setenv("MMPAB_WORK_DIR", str(other))
    run_clients("demo", clients_env(demo_root, other, ENGINE=engine, **clients))
    pd.testing.assert_frame_equal(results(other), results(local))
    pd.testing.assert_frame_equal(messages_of(other), messages_of(local))
    assert kept_digests(other) == kept_digests(local)
    return results(other)


# the two Flower runs start many processes (Ray's, or a SuperLink's and SuperNodes'): one after the other on one xdist
# worker (run_pickaback/test.sh: --dist loadgroup), so that they do not fight over the cores with each other
@pytest.mark.xdist_group("flower")
def test_flowers_simulation_gives_the_local_results(tmp_path, monkeypatch, demo_root):
    """Two clients on Flower's simulation engine (Ray), client1 borrowing in round 2 (tasks 1 and 5; task 2):
    exactly the local engine's rows, messages (with Flower's byte counts) and checkpoints. (The demo's four clients
    agree on every engine too: tools/benchmark_clients.py.)"""
    frame = same_as_local("simulation", {"NUM_CLIENTS": "2", "TASK_IDS": "1 2 5"}, tmp_path, monkeypatch, demo_root)
    learned = frame[(frame["round"] == 2) & (frame.learned == frame.task)]
    assert learned.pick.iloc[0] != "new" and len(json.loads(learned.scores.iloc[0])) == 2     # searched 2 networks


def gone(pids):
    return not any(flower.alive(pid) for pid in pids)


@pytest.fixture
def started_processes(monkeypatch):
    """The ids of every process run() started here and stopped (with their descendants, at stopping time); stops
    any that run() left."""
    seen = []
    stop = flower.stop_processes

    def recording_stop(processes, grace=5.0):
        pids = stop(processes, grace)
        seen.extend(pids)
        return pids

    monkeypatch.setattr(flower, "stop_processes", recording_stop)
    yield seen
    leftover = list(flower.STARTED)
    if leftover:
        stop(leftover)
    assert not leftover, "run() left processes running"


@pytest.mark.xdist_group("flower")
def test_a_deployment_gives_the_local_results(tmp_path, monkeypatch, demo_root, started_processes):
    """Two clients (an image and a text task), a flower-superlink and a flower-supernode per client as processes on
    127.0.0.1: the same rows, messages and checkpoints as the local engine, and every process gone afterwards.
    (Borrowing over Flower is the simulation's test: Flower starts a process per message in a deployment, and each
    batch of messages costs ~10 s on 2 cores; tools/benchmark_clients.py times the demo on every engine.)"""
    same_as_local("deployment", {"NUM_CLIENTS": "2", "TASK_IDS": "1 5"}, tmp_path, monkeypatch, demo_root)
    assert len(started_processes) >= 4 and gone(started_processes)


def test_a_damaged_client_record_stops_with_one_sentence_and_a_deleted_one_is_rebuilt(reference, tmp_path,
                                                                                      monkeypatch, demo_root):
    work = Path(shutil.copytree(reference, tmp_path / "work"))
    record = work / "checkpoints_perceiver_io" / "clients" / "demo" / "alice" / "client.json"
    kept = record.read_text()
    record.write_text('{"rounds": [1, 2]}')
    with pytest.raises(UserError, match="client alice, round 1") as e:
        local_run(monkeypatch, clients_env(demo_root, work))
    assert str(record) in str(e.value) and "delete it and rerun" in str(e.value)
    record.unlink()                                  # every round is found finished, and the record written again
    local_run(monkeypatch, clients_env(demo_root, work))
    assert json.loads(record.read_text()) == json.loads(kept)
    assert kept_digests(work) == kept_digests(reference)


def test_train_per_class_learns_each_task_from_that_many_samples_and_its_baseline_from_all(tmp_path, monkeypatch,
                                                                                           demo_root):
    from utils.pipeline import baseline, sequence
    seen = []
    for module in (baseline, sequence):
        real = module.load_task

        def spy(*args, real=real, module=module, **kwargs):
            data = real(*args, **kwargs)
            seen.append((module.__name__.rpartition(".")[2], kwargs.get("train_per_class", 0),
                         len(data.train_loader.dataset)))
            return data
        monkeypatch.setattr(module, "load_task", spy)
    local_run(monkeypatch, clients_env(demo_root, tmp_path, NUM_CLIENTS="1", TASK_IDS="1", TRAIN_PER_CLASS="2"))
    assert ("sequence", 2, 6) in seen                              # 2 samples of each of the 3 classes
    assert [n for name, _, n in seen if name == "baseline"] == [48]        # the demo_root's 16 per class


def test_a_task_owning_no_weight_below_its_baseline_stops_a_sequence_but_a_client_keeps_it(reference, tmp_path,
                                                                                          caplog):
    from utils.checkpoint import load_checkpoint, save_checkpoint
    from utils.pipeline.sequence import kept_network
    state = json.loads((reference / "checkpoints_perceiver_io/clients/demo/alice/client.json").read_text())
    ckpt = load_checkpoint(reference / "checkpoints_perceiver_io/clients/demo/alice" / state["rounds"]["1"]["kept"])
    ckpt["masks"] = {k: m.masked_fill(m == 1, 0) for k, m in ckpt["masks"].items()}     # group1 owns nothing
    save_checkpoint(ckpt, tmp_path / "owns_nothing.pth.tar")
    run = Run.from_environment("demo", {"MMPAB_DATA_ROOT": str(tmp_path)})
    s = ClientsSettings.from_environment({"MAX_NETWORK_WIDTH_MULTIPLIER": "1.0"})
    args = (run, s, [1], {"0.0": tmp_path / "owns_nothing.pth.tar"}, {"0.0": 0.3}, 1.0, 1.0)
    with pytest.raises(UserError, match="task 1 \\(group1\\) found no free weight"):
        kept_network(*args)
    key, net, shares = kept_network(*args, strict=False)
    assert key == "0.0" and not shares.get(net.task_id("group1"))
    assert "kept as it is" in caplog.text
