"""Pick-a-back's devices, called clients here (as Flower calls them; DEVICE is the torch device): what a client
holds and does in a round (device.py), the rounds, run by a coordinator that holds no data (coordinator.py), what
they say to each other (protocol.py), who the clients are (plan.py) and the engine that carries the messages in one
process, the reference (local.py). No module here imports an engine: Flower's adapter is utils/engines/."""
