"""The executor's engine: a stage's units on Ray (utils.engines.units.run_units imports this module only when GPUS
has two or more entries or RAY_ADDRESS is set): one Ray actor per worker, each a process that starts Python and
torch once and runs the units it is handed one after another, exactly as a run of one unit alone would. On one
machine (GPUS) it starts a local Ray instance with exactly those resources and stops it at the end, however the
stage ends; with RAY_ADDRESS it joins an existing cluster, first checking that every node sees the work folder.
Ray prints each actor's lines on the driver, prefixed with the actor's name, e.g. `(gpu cpu#1 pid=123)`."""
import logging
import os
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from utils.errors import UserError, os_error_message
from utils.pipeline.executor import Cluster

log = logging.getLogger("root")

# what a node keeps of its own environment when it runs a unit of a driver on another machine
MACHINE_VARIABLES = ("PATH", "HOME", "USER", "PWD", "SHELL", "HOSTNAME", "LD_LIBRARY_PATH", "PYTHONPATH",
                     "CUDA_VISIBLE_DEVICES", "TMPDIR")
CONNECT_TIMEOUT_S = 10
REPOSITORY = Path(__file__).resolve().parents[2]      # on every node at this path (the shared filesystem)


@dataclass(frozen=True)
class Outcome:
    """How a unit ended on its worker: ok, or the error's sentence and exit code."""
    ok: bool
    error: str = ""
    exit_code: int = 0


@dataclass(frozen=True)
class Place:
    """Where a worker runs: its node (IP address and Ray's id) and the GPU Ray gave it (CUDA_VISIBLE_DEVICES; "" on
    the CPU)."""
    node: str
    node_id: str
    gpu: str

    def __str__(self):
        return f"node {self.node} ({self.node_id[:8]})"


@ray.remote
class Worker:
    """One worker: a process with the worker environment that runs `run_unit(environment)` for each unit."""

    def __init__(self, label, environment, own, run_unit):
        for name in own:                                     # the settings come only from the stage environment
            if name not in environment:
                os.environ.pop(name, None)
        os.environ.update({k: v for k, v in environment.items()     # Ray's own variables and the GPU it gave
                           if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("RAY_")})
        import torch                                         # its threads: the share set in the environment
        from utils.runtime import setup_logging
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or default_threads()))
        setup_logging()
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
        self.place = Place(node, node_id, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        self.label = label or f"{self.place.node} " + (f"gpu {self.place.gpu}" if self.place.gpu else "cpu")
        self.run_unit = run_unit

    def __repr__(self):                                      # Ray's prefix of this worker's lines
        return f"gpu {self.label}"

    def where(self):
        return self.label, self.place

    def run(self, unit_env):
        return run_one(self.run_unit, {**os.environ, **unit_env, "GPUS": "", "RAY_ADDRESS": ""})

    def write_marker(self, folder, token):
        """Write this node's marker in `folder`; None, or why it could not."""
        try:
            (Path(folder) / f".mmpab-node-{token}-{self.place.node_id}").write_text(self.place.node)
        except OSError as e:
            return os_error_message(e, "write")
        return None

    def sees(self, folder, token, nodes, listing=None):
        """Whether `folder` holds every node's marker (and, for the data root, lists `listing`)."""
        folder = Path(folder)
        if listing is not None:
            return folder.is_dir() and visible(folder) == listing
        return all((folder / f".mmpab-node-{token}-{node}").is_file() for node in nodes)


def visible(folder):
    """The names in `folder` but hidden ones (caches the workers write)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def run_one(run_unit, environment):
    """Run one unit: `run_unit(environment)`, and how it ended (an Outcome: errors come back as one sentence)."""
    try:
        run_unit(environment)
    except UserError as e:
        return Outcome(False, str(e), e.exit_code)
    except OSError as e:                                     # a full disk, a read-only folder: one sentence
        return Outcome(False, os_error_message(e), 1)
    except Exception as e:                                   # noqa: BLE001 (reported to the driver as one sentence)
        traceback.print_exc()
        return Outcome(False, f"{type(e).__name__}: {e}", 1)
    return Outcome(True)


def default_threads():
    """A worker's threads when OMP_NUM_THREADS is not set: the CPUs Ray gave it, at least one."""
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def run_on_ray(name, units, run_unit, own, clock, workers):
    """Run `units` on Ray: `workers` are those of the local GPUS entries (label, environment, cpus, gpu: a local
    Ray instance runs them), or a Cluster to join."""
    cluster = isinstance(workers, Cluster)
    try:
        if cluster:
            connect(workers.address)
            actors = cluster_actors(workers, own, run_unit, len(units))
        else:
            start_local(workers)
            actors = [Worker.options(num_cpus=w.cpus, num_gpus=1 / [v.gpu for v in workers].count(w.gpu) if w.gpu
                                     else 0).remote(w.label, w.environment, own, run_unit) for w in workers]
        where = ray.get([a.where.remote() for a in actors])                # each worker's (label, Place)
        if cluster:
            check_shared(actors, where, workers.folders)
        places = dict(zip(actors, distinct(where), strict=True))
        log.info(f"{name}: {len(units)} unit(s) on {len(actors)} workers (" + ", ".join(
            f"gpu {label} = {f'cuda:{place.gpu}' if place.gpu else 'cpu'}" + (f" on {place}" if cluster else "")
            for label, place in places.values()) + ")")
        drive(name, units, places, clock)
    finally:
        if ray.is_initialized():
            time.sleep(0.5)                                  # the workers' last lines reach the driver
            ray.shutdown()                                   # a local instance stops; a cluster's actors end


def distinct(places):
    """The workers' (label, Place), a label that several workers share numbered (#1, #2...)."""
    labels = [label for label, _ in places]
    return [(label if labels.count(label) == 1 else f"{label}#{labels[:i].count(label) + 1}", place)
            for i, (label, place) in enumerate(places)]


def start_local(workers):
    """A local Ray instance with exactly the workers' resources, listening on the loopback address only."""
    gpu_ids = sorted({w.gpu for w in workers if w.gpu})
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu_ids:                                              # the GPUs Ray hands out: those GPUS names
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    try:
        ray.init(address="local", num_cpus=sum(w.cpus for w in workers), num_gpus=len(gpu_ids),
                 include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.ERROR,
                 object_store_memory=100 * 2**20, configure_logging=True, job_config=code_of_this_checkout())
    finally:
        if gpu_ids and previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        elif gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def code_of_this_checkout():
    """The job's settings: its workers import this checkout's modules (Ray puts it on their sys.path), whether or
    not it is installed or on PYTHONPATH."""
    return ray.job_config.JobConfig(code_search_path=[str(REPOSITORY)])


def no_head(address, reason):
    return UserError(f"RAY_ADDRESS={address!r} does not answer ({reason}): start a Ray head there (`ray start --head "
                     f"--port 6379`, then `ray start --address HEAD:6379` on the other machines) or unset "
                     f"RAY_ADDRESS to run on this machine.")


def connect(address):
    """Join the cluster at `address` (host:port or auto), within CONNECT_TIMEOUT_S."""
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or address, int(port or 6379)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as e:
            raise no_head(address, getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
    try:
        ray.init(address=address, logging_level=logging.ERROR, configure_logging=True,
                 job_config=code_of_this_checkout())
    except (ConnectionError, RuntimeError) as e:
        raise no_head(address, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def cluster_actors(cluster, own, run_unit, count):
    """One worker per GPU of the cluster (GPUS_PER_UNIT GPUs each), or on a cluster without GPUs one per node with
    all its CPUs; at most one per unit. A node keeps its own machine variables (PATH, HOME, ...)."""
    environment = {k: v for k, v in cluster.environment.items() if k not in MACHINE_VARIABLES}
    per_unit = cluster.gpus_per_unit
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus >= per_unit:
        return [Worker.options(num_gpus=per_unit, num_cpus=0).remote(None, {**environment, "DEVICE": "cuda:0"},
                                                                      own, run_unit)
                for _ in range(min(count, int(gpus // per_unit)))]
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")][:count]
    return [Worker.options(num_cpus=n["Resources"]["CPU"], scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(None, {**environment, "DEVICE": "cpu"}, own, run_unit) for n in nodes]


def check_shared(actors, places, folders):
    """Every worker's node (`places`: each worker's (label, Place)) sees the work folder (each writes a marker there,
    every other reads them) and the same data root as this machine: else one sentence naming the node."""
    work, data = folders
    token = uuid.uuid4().hex[:8]
    work.mkdir(parents=True, exist_ok=True)
    nodes = sorted({place.node_id for _, place in places})
    try:
        for (_, place), failed in zip(places, ray.get([a.write_marker.remote(str(work), token) for a in actors]),
                                      strict=True):
            if failed:
                raise UserError(f"{place} cannot write in the work folder {work} ({failed}): put "
                                f"MMPAB_WORK_DIR on a filesystem every node of the Ray cluster mounts at that path.")
        listing = visible(data) if Path(data).is_dir() else []
        checks = ray.get([a.sees.remote(str(work), token, nodes) for a in actors] +
                         [a.sees.remote(str(data), token, nodes, listing) for a in actors])
        for (_, place), sees_work, sees_data in zip(places, checks[:len(actors)], checks[len(actors):], strict=True):
            if not sees_work:
                raise UserError(f"{place} does not see the work folder {work} as the other nodes do: put "
                                f"MMPAB_WORK_DIR on a filesystem every node of the Ray cluster mounts at that path.")
            if not sees_data:
                raise UserError(f"{place} does not see the data root {data} as this machine does: put "
                                f"MMPAB_DATA_ROOT on a filesystem every node of the Ray cluster mounts at that path.")
    finally:
        for node in nodes:
            (work / f".mmpab-node-{token}-{node}").unlink(missing_ok=True)


def drive(name, units, places, clock):
    """Hand each free worker the next unit until all are done; the first failing unit stops the stage."""
    pending, running = list(units), {}                        # running: call -> (actor, unit, start time)

    def hand_out(actor):
        if pending:
            if clock is not None:
                log.info(clock.line(len(units) - len(pending) + 1, len(units), workers=len(places)))
            unit = pending.pop(0)
            running[actor.run.remote(unit.env)] = (actor, unit, time.time())
            log.info(f"[gpu {places[actor][0]}] {name} {unit.label}: started")

    for actor in places:
        hand_out(actor)
    while running:
        [call], _ = ray.wait(list(running), num_returns=1)
        actor, unit, started = running.pop(call)
        label, place = places[actor]
        try:
            outcome = ray.get(call)
        except RayActorError as e:
            raise UserError(f"stage {name}, {unit.label} on gpu {label}: its worker on {place} died "
                            f"({died_because(e)}); rerun the same command to continue (finished tasks are kept).") \
                from None
        if not outcome.ok:
            prefix = f"stage {name}, {unit.label}: "
            detail = outcome.error[len(prefix):] if outcome.error.startswith(prefix) else \
                outcome.error.removeprefix(f"stage {name}, ")
            raise UserError(f"stage {name}, {unit.label} on gpu {label}: {detail.removeprefix('error: ')}",
                            exit_code=outcome.exit_code or 1)
        log.info(f"[gpu {label}] {name} {unit.label}: done in {time.time() - started:.0f} s")
        if clock is not None:
            clock.finished(time.time() - started)
        hand_out(actor)


def died_because(error):
    """The first line of Ray's reason for a worker's death."""
    text = str(getattr(error, "error_msg", "") or error).strip()
    return text.splitlines()[0].rstrip(".") if text else "no reason given"

