"""The Pick-a-back pipeline: typed stage settings (settings), the run (context), the task lifecycle (lifecycle),
one module per stage (baseline, backbone, choice, search, transfer, target) with the CPG training steps they share
(cpg_steps), the selection-rule experiment (experiments), the parallel executor (executor) and the stage graph that
runs them in order (graph)."""
from utils.pipeline.graph import GRAPH, PARALLEL_STAGES, STAGES, run_stage, settings_of, summary  # noqa: F401
from utils.pipeline.settings import SETTINGS, stage_settings  # noqa: F401
