"""Engines that carry the clients' messages (utils.clients.protocol): utils.engines.flower runs them on Flower.

Importing this package turns telemetry off for Flower and Ray, in this process and in every process it starts
(they inherit the environment), before anything of Flower or Ray is imported; and it keeps the single-node Ray of
Flower's simulation on 127.0.0.1: Ray 2.55 reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported, and
with it 0 takes 127.0.0.1 as the node's address, on which its servers then listen only (by default they listen on
every interface and take the machine's external address).
"""
import os

QUIET_ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                     "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                     # and no warning about a variable Ray's next versions change (CPU-only here: nothing changes)
                     "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
os.environ.update(QUIET_ENVIRONMENT)
