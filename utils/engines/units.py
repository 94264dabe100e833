"""The executor's engine as the commands hand it to the stage graph (utils.pipeline.graph.run_stage(engine=...)):
`run_units` sets Ray's environment and imports Ray (utils/engines/ray_units.py) only when a stage has units to
spread, so that a run on one device imports nothing of it.

Ray reads its environment once, when it is imported: besides what importing utils.engines turns off (usage
statistics), every worker's lines reach the user whole and uncoloured, even identical ones; a local instance (GPUS)
stays on 127.0.0.1, while a driver that joins a cluster (RAY_ADDRESS) takes the address it reaches the cluster from,
as Ray does by default on Linux, unless the cluster's address is a loopback one (a cluster of this machine alone,
whose nodes listen on 127.0.0.1) or RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER was set before the run.
"""
import ipaddress
import os

from utils import engines

UNIT_SETTINGS = {"RAY_DEDUP_LOGS": "0", "RAY_COLOR_PREFIX": "0"}


def run_units(name, units, run_unit, own, clock, workers):
    """Run a stage's units on Ray (the engine signature of utils/pipeline/executor.py)."""
    for key, value in UNIT_SETTINGS.items():
        os.environ.setdefault(key, value)
    if not isinstance(workers, list):                         # a cluster to join
        os.environ[engines.LOOPBACK_ONLY] = engines.OWN_LOOPBACK_SETTING or ("0" if on_loopback(workers.address)
                                                                             else "1")
    from utils.engines.ray_units import run_on_ray
    run_on_ray(name, units, run_unit, own, clock, workers)


def on_loopback(address):
    """Whether a RAY_ADDRESS (host:port, or auto) names this machine's loopback interface."""
    host = address.rpartition(":")[0] or address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
