"""The PackNet view used by the baseline trainer: one task that owns every weight it uses (thin, reusing models/)."""
from models.build import Network
from utils.data import model_config


def baseline_network(cfg, data):
    """A fresh network with the task of `data` (a TaskData) as its only task, built from the dataset config like
    every other stage, on the task's device."""
    net = Network.new(model_config(cfg))
    net.start_task(data.task, data.modality, data.num_classes)
    net.set_trainable(data.task)
    net.model.to(data.device)
    return net
