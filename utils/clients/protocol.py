"""What a client (a Pick-a-back device) and the coordinator say to each other, independent of any engine.

A `Message` has a kind (what the receiver is asked to do, or what it answers), a sender, a receiver (a client's
name, or "server"), the round it belongs to and a payload: a flat dict of what a Flower ConfigRecord holds (int,
float, str, bytes, bool, or a non-empty list of one of these). Tensors travel as safetensors bytes and networks as
their checkpoint files' bytes, so every engine carries exactly the same bytes. `payload_bytes` counts a payload as
Flower counts a ConfigRecord (ConfigRecord.count_bytes: 8 per int or float, 1 per bool, the length of a str or of
bytes, summed over list items, plus the length of each key); the Flower adapter reports Flower's own count, and a test
checks both agree.

An engine carries messages: `Engine.send(requests) -> replies` delivers a batch of requests (one per receiving
client) and returns their replies in the same order; a batch is a barrier, so what a round computes never depends
on which client answers first. The coordinator (utils/clients/coordinator.py) sends the batches; each client's
`Client.handle(request) -> reply` (utils/clients/device.py) answers them.
"""
from dataclasses import dataclass, field
from typing import Protocol

SERVER = "server"
SCALARS = (bool, int, float, str, bytes)


@dataclass
class Message:
    kind: str
    sender: str
    receiver: str
    round: int
    payload: dict = field(default_factory=dict)
    counted: int | None = field(default=None, compare=False)   # the engine's own count, where it keeps one

    @property
    def size(self):
        """The bytes of the payload: the engine's count (Flower's), else payload_bytes (the same number)."""
        return self.counted if self.counted is not None else payload_bytes(self.payload)


def value_bytes(value):
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str | bytes):
        if not value:
            raise TypeError("a payload value may not be an empty str or bytes: Flower cannot count one")
        return len(value)
    raise TypeError(f"a payload value must be bool, int, float, str or bytes, not {type(value).__name__}")


def payload_bytes(payload):
    """The bytes of a payload as Flower's ConfigRecord.count_bytes counts them."""
    total = 0
    for key, value in payload.items():
        total += len(key)
        if isinstance(value, list):
            if not value:
                raise TypeError(f"payload value {key!r} is an empty list: Flower cannot carry one")
            total += sum(value_bytes(v) for v in value)
        else:
            total += value_bytes(value)
    return total


class Engine(Protocol):
    """Carries a batch of requests to the clients and returns their replies, in order."""

    def send(self, requests: list[Message]) -> list[Message]: ...
