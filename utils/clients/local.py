"""ENGINE=local: the clients and the coordinator in one process, no engine between them; the reference the Flower
engines are checked against (the same picks, bytes and checkpoints)."""
from utils.clients.coordinator import coordinate
from utils.clients.device import Client


class LocalEngine:
    """Delivers each request by calling its client's handle(), in order."""

    def __init__(self, spec, environs=None):
        environs = environs or {}          # {client: its environment} (default: this process's), as on its machine
        self.clients = {name: Client(spec, name, environs.get(name)) for name in spec["clients"]}

    def send(self, requests):
        return [self.clients[m.receiver].handle(m) for m in requests]


def run_local(spec, environs=None):
    coordinate(spec, LocalEngine(spec, environs))
