"""Engines: what carries the clients' messages (utils.clients.protocol; utils.engines.flower runs them on Flower), and
what runs a stage's independent units over GPUs and machines (utils.engines.units, on Ray).

Importing this package turns telemetry off for Flower and Ray, in this process and in every process it starts
(they inherit the environment), before anything of Flower or Ray is imported; and it keeps the single-node Ray of
Flower's simulation on 127.0.0.1: Ray 2.55 reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported, and
with it 0 takes 127.0.0.1 as the node's address, on which its servers then listen only (by default they listen on
every interface and take the machine's external address).
"""
import os

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
OWN_LOOPBACK_SETTING = os.environ.get(LOOPBACK_ONLY)      # the user's own, if any (utils.engines.units reads it)
QUIET_ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", LOOPBACK_ONLY: "0",
                     # and no warning about a variable Ray's next versions change (CPU-only here: nothing changes)
                     "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
os.environ.update(QUIET_ENVIRONMENT)
