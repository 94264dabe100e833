"""The Flower engine (utils/engines/flower.py) carries the clients' messages: in Flower's simulation engine (Ray) and
in a real deployment (a flower-superlink and a flower-supernode per client, on 127.0.0.1), with tests/flower_echo.py
as the device and the coordinator."""
import json
import time

import pytest
from flwr.app import ConfigRecord

from utils.clients.protocol import payload_bytes
from utils.engines import flower
from utils.errors import UserError

ECHO = {"client_factory": "tests.flower_echo:client_from", "coordinate": "tests.flower_echo:coordinate"}
PAYLOADS = [
    {"n": 3}, {"x": 0.25}, {"ok": True}, {"s": "hello"}, {"b": b"\x00\x01\x02"}, {"s": "né"},
    {"ns": [1, 2, 3]}, {"xs": [0.5, 1.5]}, {"oks": [True, False, True]}, {"ss": ["a", "bcd"]}, {"bs": [b"x", b"yz"]},
    {"n": 1, "x": 2.0, "ok": False, "s": "abc", "b": bytes(100), "ns": [7] * 5, "bs": [bytes(3)] * 4}, {},
]


@pytest.mark.xfail(strict=True, reason="utils/clients/protocol.py's payload_bytes leaves out the keys, which Flower's "
                   "ConfigRecord.count_bytes counts (len(key) each): add them there, then drop this mark")
def test_payload_bytes_is_flowers_count():
    assert [payload_bytes(p) for p in PAYLOADS] == [ConfigRecord(p).count_bytes() for p in PAYLOADS]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_flowers_count_is_values_plus_keys(payload):
    # what the engine reports (flower_bytes) is Flower's count; today it differs from payload_bytes by the keys only
    assert ConfigRecord(payload).count_bytes() == payload_bytes(payload) + sum(len(k) for k in payload)


def expected(clients, rounds):
    """What tests/flower_echo.py's coordinator writes when every client answers in order."""
    out = []
    for round_ in rounds:
        requests = [{"words": [c, "hi"], "n": 3} for c in clients]
        replies = [{"name": c, "round": round_, "seen": 0, "blob": bytes(round_ * 10), "ratio": 0.5, "ok": True,
                    "echo": [c, "hi"]} for c in clients]
        out.append({"requests": [[c, payload_bytes(p), ConfigRecord(p).count_bytes()]
                                 for c, p in zip(clients, requests, strict=True)],
                    "replies": [[c, c, round_, None, payload_bytes(r), ConfigRecord(r).count_bytes(),
                                 [c, "hi"]] for c, r in zip(clients, replies, strict=True)]})
    return out


def written(path):
    """The coordinator's file, without how many requests each device object had seen (it depends on how often
    Flower rebuilds it: once per Ray actor in simulation, once per ClientApp process in deployment)."""
    rounds = json.loads(path.read_text())
    for round_ in rounds:
        for reply in round_["replies"]:
            assert reply[3] >= 1
            reply[3] = None
    return rounds


def test_simulation(tmp_path):
    spec = {"clients": ["alice", "bob"], "out": str(tmp_path / "out.json")}
    start = time.monotonic()
    flower.run("simulation", spec, **ECHO, timeout=60)
    print(f"simulation: {time.monotonic() - start:.1f} s")
    assert written(tmp_path / "out.json") == expected(spec["clients"], (1, 2))


def test_simulation_error_reaches_the_caller(tmp_path):
    spec = {"clients": ["alice", "bob"], "out": str(tmp_path / "out.json"), "fail": {"bob": 1}}
    start = time.monotonic()
    with pytest.raises(UserError, match="^client bob refuses round 1$"):
        flower.run("simulation", spec, **ECHO, timeout=60)
    print(f"simulation failing: {time.monotonic() - start:.1f} s")


def gone(pids):
    return not any(flower.alive(pid) for pid in pids)


@pytest.fixture
def started_processes(monkeypatch):
    """The ids of every process run() starts here (and their descendants, at stopping time)."""
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


def test_deployment(tmp_path, started_processes):
    # one real deployment (~25 s on 2 cores: Flower starts a process per ServerApp run and per ClientApp message)
    spec = {"clients": ["alice", "bob"], "out": str(tmp_path / "out.json")}
    start = time.monotonic()
    flower.run("deployment", spec, **ECHO, timeout=60)
    print(f"deployment: {time.monotonic() - start:.1f} s")
    assert written(tmp_path / "out.json") == expected(spec["clients"], (1, 2))
    assert len(started_processes) >= 4 and gone(started_processes)  # SuperLink, 2 SuperNodes, flwr run, ...


def test_deployment_device_error(tmp_path, started_processes):
    # a device's UserError comes back as the caller's UserError, its sentence unchanged; every process started is gone
    spec = {"clients": ["alice", "bob"], "out": str(tmp_path / "out.json"), "fail": {"bob": 1}}
    start = time.monotonic()
    with pytest.raises(UserError, match="^client bob refuses round 1$"):
        flower.run("deployment", spec, **ECHO, timeout=60)
    print(f"deployment failing: {time.monotonic() - start:.1f} s")
    assert started_processes and gone(started_processes)


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
