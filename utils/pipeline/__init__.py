"""The Pick-a-back pipeline: typed stage settings (settings), the run (context), the task lifecycle (lifecycle),
one module per stage (baseline, backbone, choice, search, transfer, target, and the sequence run), none importing
another: what they read of each other's outputs (inputs), compacting a task and the chooser's rule (compacting),
the CPG training steps (cpg_steps); the selection-rule experiment (experiments), the parallel executor (executor),
the stage graph that runs them in order (graph) and the status of a run read from its files (status).

The graph's names are re-exported lazily (PEP 562), so that importing one module of the package (tools/status.py
imports only what it reads) does not import every stage."""
import importlib

EXPORTS = {"GRAPH": "graph", "PARALLEL_STAGES": "graph", "STAGES": "graph", "run_stage": "graph",
           "settings_of": "graph", "summary": "graph", "SETTINGS": "settings", "stage_settings": "settings"}


def __getattr__(name):
    if name in EXPORTS:
        return getattr(importlib.import_module(f"utils.pipeline.{EXPORTS[name]}"), name)
    raise AttributeError(f"module 'utils.pipeline' has no attribute {name!r}")
