"""The PackNet view used by the baseline trainer: one task that owns every weight it uses (thin, reusing models/)."""
from models.build import Network
from utils.data import model_config


def baseline_network(cfg, task, modality, num_classes):
    """A fresh network with `task` as its only task, built from the dataset config like every other stage."""
    net = Network.new(model_config(cfg))
    net.start_task(task, modality, num_classes)
    net.set_trainable(task)
    return net
