"""Checkpoints of any stage as inference models for the backbone search, and the k/v swap (thin, reusing models/)."""
from packnet_models_pickaback.inference import (InferenceModel, kv_layer_name, load_network,  # noqa: F401
                                                reader_keys, reader_state, swap_reader)
