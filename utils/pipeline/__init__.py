"""The Pick-a-back stage graph (being moved here from utils/stages.py)."""
from utils.stages import STAGES, run_stage, stage_settings  # noqa: F401
