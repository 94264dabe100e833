"""The Flower engine: Flower carries every message between the coordinator and the clients (Pick-a-back's devices).

    ENGINE=simulation (one process, Ray)          ENGINE=deployment (separate processes, one machine or several)

    run()                                         run() ──flwr run --stream──▶ flower-superlink (127.0.0.1:PORT)
     └ flwr.simulation.run_simulation                                              │ starts flwr-serverapp:
        ├ ServerApp thread: coordinate(spec, engine)                               │  coordinate(spec, engine)
        │     engine.send(batch) ─ InMemoryGrid ─┐                                 │  engine.send(batch) ─ Grid ─┐
        └ Ray actors: ClientApp ◀────────────────┘          flower-supernode --node-config "client='alice'" ◀──┤
             device = client_factory(spec, name)            flower-supernode --node-config "client='bob'"   ◀──┘
             reply = device.handle(request)                   (each: ClientApp → device.handle(request))

A protocol `Message` travels as a Flower Message of type "query" whose RecordDict holds two ConfigRecords: "payload"
(the payload, unchanged) and "meta" (kind, sender, receiver, round); a reply comes back the same way. Each request
and reply the engine hands over carries `counted`: `content["payload"].count_bytes()`, Flower's own count
(equal to utils.clients.protocol.payload_bytes, which tests/test_flower_engine.py checks).

At the start the ServerApp asks every node which client it is (a "query.whoami" message: the node's node_config
`client`, else spec["clients"][partition-id]) and checks that each client has exactly one node. The ServerApp and
ClientApps rebuild everything from strings: the spec (JSON) and the two "module:function" factories, passed in the
ClientApp/ServerApp objects (simulation) or in the run config (deployment, utils/engines/flower_app/pyproject.toml).
A device is built once per ClientApp process and client (cached here by name); nothing is kept in Flower's
per-node context state. In simulation that is once per Ray actor (an actor may serve any client from one batch to
the next); in deployment Flower 1.42 starts one flwr-clientapp process per message, so a device is rebuilt for every
request: what it keeps between rounds lives in its files.

Deployment on this machine (superlink=None): a flower-superlink on 127.0.0.1:PORT (one HTTP port for the Fleet,
Control and Runtime APIs; PORT free, chosen at run time) and a flower-supernode per client (its own free Runtime API
port), with FLWR_HOME in a temporary folder; `flwr run utils/engines/flower_app mmpab --run-config FILE --stream`
submits the run and streams the ServerApp's output until it ends; the ServerApp prints OUTCOME_OK or OUTCOME_ERROR
and the error sentence, which run() raises as UserError. Every process started is stopped at the end (process groups
and descendants), also on failure or Ctrl-C. With superlink="host:port" only the submission happens here:
deployment_commands() writes what to start on each machine.

Errors surface as `UserError` in the caller of run(): a client's UserError keeps its sentence, another exception in
a device its type and message, a missing reply or a Flower error names the client, the request and the fix.
"""
import contextlib
import glob
import importlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import flwr.app as fa  # after utils/engines/__init__.py turned telemetry off
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from utils.clients.protocol import Message
from utils.engines import QUIET_ENVIRONMENT
from utils.errors import UserError

LOG = logging.getLogger(__name__)
APP_DIR = Path(__file__).with_name("flower_app")
REPO_ROOT = Path(__file__).resolve().parents[2]
WHOAMI = "query.whoami"
QUERY = "query"
# Error codes of the replies a ClientApp builds itself (Flower's own codes are small numbers)
USER_ERROR_CODE = 9001
DEVICE_ERROR_CODE = 9002
# what the deployment ServerApp prints, so that the caller of run() reads its outcome from the run's log
OUTCOME_OK = "MMPAB-FLOWER-OK"
OUTCOME_ERROR = "MMPAB-FLOWER-ERROR:"
# the largest message Flower carries in one piece (protobuf's limit, 2 GiB - 1)
MAX_MESSAGE_BYTES = 2**31 - 1
CONNECTION = "mmpab"
DISCOVERY_WAIT = 60.0
QUIET_LEVEL = "ERROR"


def load(reference):
    """The function a "module:function" string names."""
    module, _, name = reference.partition(":")
    if not module or not name:
        raise UserError(f"{reference!r} is not a 'module:function' reference: write it as 'package.module:function'")
    return getattr(importlib.import_module(module), name)


# ---- the message mapping -------------------------------------------------------------------------------------------
def to_content(message):
    meta = {"kind": message.kind, "sender": message.sender, "receiver": message.receiver, "round": message.round}
    return fa.RecordDict({"payload": fa.ConfigRecord(dict(message.payload)), "meta": fa.ConfigRecord(meta)})


def from_content(content):
    meta = content["meta"]
    message = Message(kind=meta["kind"], sender=meta["sender"], receiver=meta["receiver"],
                      round=int(meta["round"]), payload=dict(content["payload"]))
    message.counted = content["payload"].count_bytes()
    return message


# ---- the ClientApp -------------------------------------------------------------------------------------------------
DEVICES = {}


def device_for(setup, name):
    """The device of client `name`, built once per process (for this spec and factory)."""
    key = (setup["client-factory"], setup["spec"], name)
    if key not in DEVICES:
        DEVICES[key] = load(setup["client-factory"])(json.loads(setup["spec"]), name)
    return DEVICES[key]


def node_client(context, spec):
    """The client a node runs: its node_config `client`, else spec["clients"][partition-id]."""
    config = context.node_config
    if "client" in config:
        return str(config["client"])
    if "partition-id" in config and int(config["partition-id"]) < len(spec["clients"]):
        return spec["clients"][int(config["partition-id"])]
    raise UserError("a SuperNode was started without a client name: start it with --node-config \"client='NAME'\"")


def error_reply(request, error):
    if isinstance(error, UserError):
        return fa.Message(fa.Error(USER_ERROR_CODE, str(error)), reply_to=request)
    text = f"{type(error).__name__}: {error}"
    LOG.error("%s", "".join(traceback.format_exception(error)))
    return fa.Message(fa.Error(DEVICE_ERROR_CODE, text), reply_to=request)


class ClientMain:
    """What a node does with a message; `setup` is the run's spec and factories (None: read from the run config)."""

    def __init__(self, setup=None):
        self.setup = setup

    def __call__(self, request, context):
        try:
            setup = self.setup or run_setup(context.run_config)
            spec = json.loads(setup["spec"])
            name = node_client(context, spec)
            if request.metadata.message_type == WHOAMI:
                return fa.Message(fa.RecordDict({"meta": fa.ConfigRecord({"client": name})}), reply_to=request)
            incoming = from_content(request.content)
            answer = device_for(setup, name).handle(incoming)
            return fa.Message(to_content(answer), reply_to=request)
        except Exception as error:  # noqa: BLE001  (every failure goes back to the coordinator in the reply)
            return error_reply(request, error)


def client_app(setup=None):
    app = ClientApp()
    main = ClientMain(setup)
    app.query()(main)
    app.query("whoami")(main)
    return app


def run_setup(run_config):
    return {key: run_config[key] for key in ("spec", "client-factory", "coordinate")} | {
        "timeout": float(run_config.get("timeout", 3600.0))}


# ---- the ServerApp: discovery and the Engine -----------------------------------------------------------------------
class FlowerEngine:
    """utils.clients.protocol.Engine on a Flower Grid."""

    def __init__(self, grid, timeout, poll=0.02):
        self.grid = grid
        self.timeout = timeout
        self.poll = poll
        self.nodes = {}

    def exchange(self, messages, what):
        """Push `messages`, return {message id: reply} of those answered within the timeout; `what(i)` names the
        i-th message in an error sentence."""
        ids = []
        for i, message in enumerate(messages):
            try:
                pushed = list(self.grid.push_messages([message]))
            except Exception as error:
                raise UserError(f"Flower could not send {what(i)} ({type(error).__name__}: {error}): if it is too "
                                "large, send less in one message (split it over several requests)") from error
            if not pushed or pushed[0] is None:
                raise UserError(f"Flower refused {what(i)} (too large or malformed): send less in one message "
                                "(split it over several requests)")
            ids.append(pushed[0])
        replies = {}
        deadline = time.monotonic() + self.timeout
        wait = self.poll
        while len(replies) < len(ids) and time.monotonic() < deadline:
            for reply in self.grid.pull_messages([i for i in ids if i not in replies]):
                replies[reply.metadata.reply_to_message_id] = reply
            if len(replies) < len(ids):
                time.sleep(wait)
                wait = min(wait * 1.5, 1.0)
        return ids, replies

    def discover(self, clients, wait=DISCOVERY_WAIT):
        """{client name: node id} for the nodes connected; waits up to `wait` s for every client to have one."""
        deadline = time.monotonic() + wait
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= len(clients) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        requests = [fa.Message(fa.RecordDict(), dst_node_id=n, message_type=WHOAMI) for n in node_ids]
        ids, replies = self.exchange(requests, lambda i: f"the question to node {node_ids[i]} which client it is")
        names = {}
        for node_id, message_id in zip(node_ids, ids, strict=True):
            reply = replies.get(message_id)
            if reply is None:
                continue
            if reply.has_error():
                raise UserError(f"node {node_id} could not say which client it is: {reply.error.reason}")
            names.setdefault(reply.content["meta"]["client"], []).append(node_id)
        missing = [c for c in clients if c not in names]
        doubled = [c for c in clients if len(names.get(c, [])) > 1]
        unknown = [n for n in names if n not in clients]
        if missing or doubled or unknown:
            parts = [f"no SuperNode for client(s) {', '.join(missing)}" if missing else "",
                     f"several SuperNodes for {', '.join(doubled)}" if doubled else "",
                     f"SuperNodes for unknown client(s) {', '.join(unknown)}" if unknown else ""]
            raise UserError(f"{'; '.join(p for p in parts if p)}: start exactly one SuperNode per client with "
                            f"flower-supernode --insecure --superlink HOST:PORT --node-config \"client='NAME'\" "
                            f"(clients: {', '.join(clients)}) and rerun")
        self.nodes = {name: node_ids[0] for name, node_ids in names.items()}
        return self.nodes

    def send(self, requests):
        receivers = [r.receiver for r in requests]
        if len(set(receivers)) != len(receivers):
            raise ValueError(f"a batch holds at most one request per client, got {receivers}")
        messages = []
        for request in requests:
            if request.receiver not in self.nodes:
                raise ValueError(f"request {request.kind!r} is for {request.receiver!r}, not a client of this run")
            if request.size > MAX_MESSAGE_BYTES:
                raise UserError(f"the {request.kind!r} request of round {request.round} to {request.receiver} holds "
                                f"{request.size} bytes, more than Flower carries in one message ({MAX_MESSAGE_BYTES}):"
                                " split its payload over several requests")
            content = to_content(request)
            request.counted = content["payload"].count_bytes()
            ttl = max(fa.DEFAULT_TTL, self.timeout)
            messages.append(fa.Message(content, dst_node_id=self.nodes[request.receiver], message_type=QUERY, ttl=ttl))

        def what(i):
            return f"the {requests[i].kind!r} request of round {requests[i].round} to client {requests[i].receiver}"

        ids, replies = self.exchange(messages, what)
        answers = []
        for request, message_id in zip(requests, ids, strict=True):
            reply = replies.get(message_id)
            name = f"client {request.receiver}"
            asked = f"its {request.kind!r} request of round {request.round}"
            if reply is None:
                raise UserError(f"{name} did not answer {asked} within {self.timeout:g} s (its SuperNode stopped, "
                                "failed or is too slow): restart it and rerun the same command; finished work is kept")
            if reply.has_error():
                code, reason = reply.error.code, reply.error.reason
                if code == USER_ERROR_CODE:
                    raise UserError(reason)
                if code == DEVICE_ERROR_CODE:
                    raise UserError(f"{name} failed on {asked}: {reason}")
                raise UserError(f"{name} did not answer {asked} (Flower error {code}: {reason}; its SuperNode "
                                "stopped or failed): restart it and rerun the same command; finished work is kept")
            answers.append(from_content(reply.content))
        return answers


def coordinate_on(grid, setup):
    engine = FlowerEngine(grid, setup["timeout"])
    spec = json.loads(setup["spec"])
    engine.discover(spec["clients"])
    load(setup["coordinate"])(spec, engine)


def server_app(setup=None, outcome=None):
    """The ServerApp; `setup` None: read from the run config (deployment). Simulation passes `outcome`, a list that
    receives the coordinator's exception (run_simulation would log and swallow it)."""
    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            coordinate_on(grid, setup or run_setup(context.run_config))
        except BaseException as error:
            if outcome is None:  # deployment: the caller reads the outcome from the run's log
                sentence = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
                if not isinstance(error, UserError):
                    traceback.print_exc()
                print(OUTCOME_ERROR, json.dumps(sentence), flush=True)
                raise
            outcome.append(error)
            return
        if outcome is None:
            print(OUTCOME_OK, flush=True)

    return app


# the deployment's components (utils/engines/flower_app/pyproject.toml names them)
serverapp = server_app()
clientapp = client_app()


# ---- run -----------------------------------------------------------------------------------------------------------
def run(engine: str, spec: dict, *, client_factory: str, coordinate: str, superlink: str | None = None,
        timeout: float = 3600.0) -> None:
    """Run the protocol: `coordinate(spec, engine)` on the server side, `client_factory(spec, name).handle` on each
    client of spec["clients"], Flower carrying the messages. engine: "simulation" or "deployment"; superlink
    ("host:port", deployment only): submit to a running SuperLink instead of starting one with a SuperNode per client
    here; timeout: seconds a batch waits for its replies."""
    clients = list(spec.get("clients") or [])
    if not clients or len(set(clients)) != len(clients) or not all(isinstance(c, str) and c for c in clients):
        raise UserError(f"spec['clients'] must list distinct client names, got {clients!r}")
    setup = {"spec": json.dumps(spec), "client-factory": client_factory, "coordinate": coordinate,
             "timeout": float(timeout)}
    if engine == "simulation":
        return run_simulation(setup, clients)
    if engine == "deployment":
        return run_deployment(setup, clients, superlink)
    raise UserError(f"engine {engine!r} is not one of 'simulation' or 'deployment'")


def quiet_flower():
    os.environ.setdefault("FLWR_LOG_LEVEL", QUIET_LEVEL)
    for name in ("flwr", "alembic"):                 # alembic: the migrations of Flower's in-memory state database
        logging.getLogger(name).setLevel(QUIET_LEVEL)


def gpu_count():
    """The CUDA devices this process may use, without importing torch (seconds): CUDA_VISIBLE_DEVICES when set,
    else the NVIDIA driver's list."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/proc/driver/nvidia/gpus/*"))


def simulation_backend(clients):
    """One CPU per virtual SuperNode, and an equal share of the GPUs (at most one each); Ray on 127.0.0.1, quiet."""
    gpus = min(1.0, gpu_count() / len(clients))
    return {"client_resources": {"num_cpus": 1, "num_gpus": gpus},
            "init_args": {"include_dashboard": False, "_node_ip_address": "127.0.0.1",
                          "logging_level": QUIET_LEVEL, "log_to_driver": True, "configure_logging": True}}


def run_simulation(setup, clients):
    from flwr.simulation import run_simulation as flower_simulation
    quiet_flower()
    outcome = []
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "FLWR_HOME")}
    with tempfile.TemporaryDirectory(prefix="mmpab-flower-") as home:
        os.environ["FLWR_HOME"] = home  # Flower's home (and Ray workers'), not the user's ~/.flwr
        try:
            flower_simulation(server_app=server_app(setup, outcome), client_app=client_app(setup),
                              num_supernodes=len(clients), backend_config=simulation_backend(clients))
        finally:
            import ray
            if ray.is_initialized():
                ray.shutdown()
            # the Ray backend widens this process's PYTHONPATH for its workers: put it back
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    if outcome:
        raise outcome[0]


# ---- deployment ----------------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(address, wait, refused_wait=None):
    """Whether something accepts connections at host:port within `wait` s (`refused_wait` s when it is refused:
    nothing listens there)."""
    host, _, port = address.rpartition(":")
    start = time.monotonic()
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except ConnectionRefusedError:
            if time.monotonic() - start >= (wait if refused_wait is None else refused_wait):
                return False
        except (OSError, ValueError):
            if time.monotonic() - start >= wait:
                return False
        time.sleep(0.1)


def process_environment(home):
    env = dict(os.environ)
    env.update(QUIET_ENVIRONMENT)
    env["FLWR_HOME"] = str(home)
    env.setdefault("FLWR_LOG_LEVEL", "INFO")
    # how often a SuperExec looks for a ServerApp/ClientApp to start (Flower's default: 1 s, per message)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])
    return env


def superlink_command(host="127.0.0.1", port=9093):
    return ["flower-superlink", "--insecure", "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def supernode_command(superlink, client, host="127.0.0.1", port=9094):
    return ["flower-supernode", "--insecure", "--superlink", superlink, "--host", host, "--port", str(port),
            "--node-config", f'client="{client}"']


def deployment_commands(clients, superlink_address):
    """The commands of a deployment over several machines, as text: the SuperLink machine's, each client machine's
    and the submission (run() with superlink=superlink_address, e.g. ENGINE=deployment)."""
    host, _, port = superlink_address.rpartition(":")
    lines = [f"# on the SuperLink machine ({host}), from the repository checkout:",
             f"FLWR_TELEMETRY_ENABLED=0 PYTHONPATH=$PWD {shlex.join(superlink_command('0.0.0.0', int(port)))}"]
    for client in clients:
        command = shlex.join(supernode_command(superlink_address, client))
        lines += [f"# on client {client}'s machine, from the repository checkout (its data under MMPAB_DATA_ROOT, its "
                  f"networks under MMPAB_WORK_DIR):",
                  f"FLWR_TELEMETRY_ENABLED=0 PYTHONPATH=$PWD {command}"]
    lines += ["# then submit the run from any machine that reaches the SuperLink, with the same config and variables:",
              f"ENGINE=deployment SUPERLINK={superlink_address} bash run_pickaback/clients.sh <cfg>"]
    return "\n".join(lines) + "\n"


def descendants(pid):
    """The ids of `pid`'s descendant processes (Linux /proc), also those in sessions of their own."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_processes(processes, grace=5.0):
    """Stop the processes we started and everything they started (process groups and descendants)."""
    pids = []
    for process in processes:
        pids += [process.pid, *descendants(process.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig) if pid in {p.pid for p in processes} else os.kill(pid, sig)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.05)
        if not any(alive(pid) for pid in pids):
            return pids
    return pids


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def start(command, log, env):
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def tail(path, lines=5):
    with contextlib.suppress(OSError):
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


# the processes run_deployment started and has not stopped yet (tests check that none outlive a run)
STARTED = []


def run_deployment(setup, clients, superlink):
    with tempfile.TemporaryDirectory(prefix="mmpab-flower-") as folder:
        folder = Path(folder)
        env = process_environment(folder / "home")
        processes = []
        try:
            if superlink is None:
                port = free_port()
                superlink = f"127.0.0.1:{port}"
                processes.append(start(superlink_command(port=port), folder / "superlink.log", env))
                STARTED.append(processes[-1])
                for client in clients:
                    command = supernode_command(superlink, client, port=free_port())
                    processes.append(start(command, folder / f"supernode-{client}.log", env))
                    STARTED.append(processes[-1])
                if not answers(superlink, 30.0):
                    raise UserError(f"the SuperLink started here did not listen on {superlink} within 30 s: "
                                    f"{tail(folder / 'superlink.log')}")
            elif not answers(superlink, 3.0, refused_wait=0.5):
                raise UserError(f"no SuperLink answers at {superlink}: start one there with "
                                f"{shlex.join(superlink_command('0.0.0.0', superlink.rpartition(':')[2]))} "
                                "(and a SuperNode per client), or check the address, and rerun")
            submit(setup, superlink, folder, env)
        finally:
            stopped = stop_processes(processes)
            for process in processes:
                STARTED.remove(process)
            LOG.debug("stopped processes %s", stopped)


def write_connection(home, superlink):
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{superlink}"\n'
        "insecure = true\n")


def submit(setup, superlink, folder, env):
    import tomli_w
    write_connection(Path(env["FLWR_HOME"]), superlink)
    overrides = folder / "run_config.toml"
    overrides.write_text(tomli_w.dumps(setup))
    command = ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", str(overrides), "--stream"]
    with open(folder / "run.log", "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
        try:
            rc = process.wait()
        finally:
            stop_processes([process], grace=2.0)
    outcome((folder / "run.log").read_text(errors="replace"), rc, superlink)


def outcome(output, rc, superlink):
    """Raise the UserError the ServerApp reported in the run's log (what `flwr run --stream` printed), or one
    saying the run ended without reporting; return when it reported success."""
    for line in output.splitlines():
        if OUTCOME_ERROR in line:
            raise UserError(json.loads(line.split(OUTCOME_ERROR, 1)[1].strip()))
    if not any(line.strip() == OUTCOME_OK for line in output.splitlines()):
        match = re.search(r"started run (\d+)", output)
        run_id = match.group(1) if match else "?"
        last = " | ".join(output.strip().splitlines()[-3:])
        raise UserError(f"the Flower run {run_id} on {superlink} ended without an outcome (flwr run exited {rc}: "
                        f"{last}): check the SuperLink's and SuperNodes' logs and rerun")
