"""Engines that carry the clients' messages (utils.clients.protocol): utils.engines.flower runs them on Flower.

Importing this package turns telemetry off for Flower and Ray, in this process and in every process it starts
(they inherit the environment), before anything of Flower is imported.
"""
import os

QUIET_ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                     # and no warning about a variable Ray's next versions change (CPU-only here: nothing changes)
                     "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
os.environ.update(QUIET_ENVIRONMENT)
