"""Checkpoints of any stage as inference models for the backbone search, and the k/v swap (thin, reusing models/)."""
from packnet_models_pickaback.inference import (InferenceModel, backbone_folder, baseline_folder,  # noqa: F401
                                                kv_layer_name, load_network, reader_keys, reader_state,
                                                swap_reader)
