"""The Flower engine (utils/engines/flower.py) carries the clients' messages: Flower's byte count, the mapping of
messages, errors and discovery on an in-process Grid with tests/flower_echo.py as the device, the outcome of a
deployment and the SuperLink address check. The real engines with the real clients (simulation, deployment) are
tested against the local engine in tests/test_clients_engines.py."""
import json
import time

import pytest
import flwr.app as fa
from flwr.app import ConfigRecord

from utils.clients.protocol import SERVER, Message, payload_bytes
from utils.engines import flower
from utils.errors import UserError

ECHO = {"client_factory": "tests.flower_echo:client_from", "coordinate": "tests.flower_echo:coordinate"}
PAYLOADS = [
    {"n": 3}, {"x": 0.25}, {"ok": True}, {"s": "hello"}, {"b": b"\x00\x01\x02"}, {"s": "né"},
    {"ns": [1, 2, 3]}, {"xs": [0.5, 1.5]}, {"oks": [True, False, True]}, {"ss": ["a", "bcd"]}, {"bs": [b"x", b"yz"]},
    {"n": 1, "x": 2.0, "ok": False, "s": "abc", "b": bytes(100), "ns": [7] * 5, "bs": [bytes(3)] * 4}, {},
]


def test_payload_bytes_is_flowers_count():
    assert [payload_bytes(p) for p in PAYLOADS] == [ConfigRecord(p).count_bytes() for p in PAYLOADS]


def test_deployment_outcome():
    # what `flwr run --stream` printed: the ServerApp's success line, its error sentence, or neither
    flower.outcome(f"Successfully started run 7\n{flower.OUTCOME_OK}\nINFO ...\n", 0, "127.0.0.1:1")
    with pytest.raises(UserError, match="^client bob refuses$"):
        flower.outcome(f'started run 7\n{flower.OUTCOME_ERROR} "client bob refuses"\n', 0, "127.0.0.1:1")
    with pytest.raises(UserError, match="^the Flower run 7 on 127.0.0.1:1 ended without an outcome .flwr run exited 1"):
        flower.outcome("Successfully started run 7\nTraceback ...\n", 1, "127.0.0.1:1")


class FakeGrid:
    """A Grid that hands each message to ClientMain in this process: the engine's mapping and errors, in ms."""

    def __init__(self, setup, node_configs, answer=None):
        self.main = flower.ClientMain(setup)
        self.node_configs = node_configs
        self.answer = answer or (lambda message, reply: reply)
        self.replies = {}
        self.refuse = False

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            if self.refuse:
                return []
            message.metadata.__dict__["_message_id"] = message.object_id
            context = fa.Context(run_id=1, node_id=message.metadata.dst_node_id,
                                 node_config=self.node_configs[message.metadata.dst_node_id], state=fa.RecordDict(),
                                 run_config={})
            reply = self.answer(message, self.main(message, context))
            if reply is not None:
                self.replies[message.object_id] = reply
            ids.append(message.object_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's Message() reads the run's identity, which Flower's runtimes set (a ServerApp process, a simulation)."""
    from flwr.supercore.task_identity import TaskIdentity
    for attribute, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


def engine_on(spec, node_configs, answer=None, factory="tests.flower_echo:client_from"):
    setup = {"spec": json.dumps(spec), "client-factory": factory, "coordinate": ECHO["coordinate"]}
    engine = flower.FlowerEngine(FakeGrid(setup, node_configs, answer), timeout=0.2)
    return engine


def ask(client, round_=1):
    return Message(kind="ask", sender=SERVER, receiver=client, round=round_, payload={"words": [client], "n": 1})


def test_engine_mapping_and_errors(task_identity):
    spec = {"clients": ["alice", "bob"], "fail": {"bob": 2}}
    engine = engine_on(spec, {11: {"partition-id": 0}, 12: {"client": "bob"}})
    assert engine.discover(spec["clients"], wait=0) == {"alice": 11, "bob": 12}
    batch = [ask("bob"), ask("alice")]
    replies = engine.send(batch)
    assert [(r.kind, r.sender, r.receiver, r.round, r.payload["name"]) for r in replies] == [
        ("echo", "bob", SERVER, 1, "bob"), ("echo", "alice", SERVER, 1, "alice")]
    for message in batch + replies:
        assert message.counted == ConfigRecord(message.payload).count_bytes()
    # a device's UserError: its sentence; another exception: its type and message, naming the client and request
    with pytest.raises(UserError, match="^client bob refuses round 2$"):
        engine.send([ask("alice", 2), ask("bob", 2)])
    broken = engine_on(spec, {11: {"partition-id": 0}, 12: {"partition-id": 1}}, factory="json:loads")
    broken.discover(spec["clients"], wait=0)
    with pytest.raises(UserError, match="^client alice failed on its 'ask' request of round 1: TypeError: "):
        broken.send([ask("alice")])


def test_engine_missing_and_failed_replies(task_identity):
    spec = {"clients": ["alice", "bob"]}
    nodes = {11: {"client": "alice"}, 12: {"client": "bob"}}
    silent = engine_on(spec, nodes, answer=lambda m, r: None if m.metadata.message_type == "query" and
                       m.metadata.dst_node_id == 12 else r)
    silent.discover(spec["clients"], wait=0)
    with pytest.raises(UserError, match="^client bob did not answer its 'ask' request of round 1 within 0.2 s .* "
                       "restart it and rerun the same command; finished work is kept$"):
        silent.send([ask("alice"), ask("bob")])
    failed = engine_on(spec, nodes, answer=lambda m, r: fa.Message(fa.Error(3, "node went offline"), reply_to=m)
                       if m.metadata.message_type == "query" else r)
    failed.discover(spec["clients"], wait=0)
    with pytest.raises(UserError, match="^client alice did not answer its 'ask' request of round 1 .Flower error 3: "
                       "node went offline"):
        failed.send([ask("alice")])
    failed.grid.refuse = True
    with pytest.raises(UserError, match="^Flower refused the 'ask' request of round 1 to client alice .too large"):
        failed.send([ask("alice")])


def test_engine_discovery(task_identity):
    spec = {"clients": ["alice", "bob", "carol"]}
    engine = engine_on(spec, {11: {"client": "alice"}, 12: {"client": "alice"}, 13: {"client": "dave"}})
    with pytest.raises(UserError, match="^no SuperNode for client.s. bob, carol; several SuperNodes for alice; "
                       "SuperNodes for unknown client.s. dave: start exactly one SuperNode per client with "
                       "flower-supernode"):
        engine.discover(spec["clients"], wait=0)
    nameless = engine_on(spec, {11: {}})
    with pytest.raises(UserError, match="^node 11 could not say which client it is: a SuperNode was started"):
        nameless.discover(spec["clients"], wait=0)


def test_superlink_not_answering():
    start = time.monotonic()
    address = f"127.0.0.1:{flower.free_port()}"
    with pytest.raises(UserError, match=f"no SuperLink answers at {address}: start one there with flower-superlink"):
        flower.run("deployment", {"clients": ["alice"]}, **ECHO, superlink=address)
    assert time.monotonic() - start < 10


def test_deployment_commands():
    text = flower.deployment_commands(["alice", "bob"], "10.0.0.5:9093")
    assert "flower-superlink --insecure --host 0.0.0.0 --port 9093" in text
    assert "--superlink 10.0.0.5:9093" in text and 'client="bob"' in text
