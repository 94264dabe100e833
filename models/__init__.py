"""The network: one multimodal Perceiver IO and the CPG machinery (ownership masks, piggymasks, width growth)."""
from models.perceiver_io import MultimodalPerceiverIO  # noqa: F401
