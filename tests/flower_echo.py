"""An echo device and a two-round coordinator for tests/test_flower_engine.py (the engine's test app)."""
import json

from utils.clients.protocol import SERVER, Message
from utils.errors import UserError


class Echo:
    def __init__(self, spec, name):
        self.name = name
        self.fail = spec.get("fail", {})
        self.seen = 0

    def handle(self, request):
        self.seen += 1
        if self.fail.get(self.name) == request.round:
            raise UserError(f"client {self.name} refuses round {request.round}")
        payload = {"name": self.name, "round": request.round, "seen": self.seen, "blob": bytes(request.round * 10),
                   "ratio": 0.5, "ok": True, "echo": request.payload.get("words", ["none"])}
        return Message(kind="echo", sender=self.name, receiver=SERVER, round=request.round, payload=payload)


def client_from(spec, name):
    return Echo(spec, name)


def coordinate(spec, engine):
    rounds = []
    for round_ in range(1, spec.get("rounds", 2) + 1):
        batch = [Message(kind="ask", sender=SERVER, receiver=c, round=round_, payload={"words": [c, "hi"], "n": 3})
                 for c in spec["clients"]]
        replies = engine.send(batch)
        rounds.append({"requests": [[r.receiver, r.size, r.counted] for r in batch],
                       "replies": [[r.sender, r.payload["name"], r.payload["round"], r.payload["seen"], r.size,
                                    r.counted, r.payload["echo"]] for r in replies]})
        with open(spec["out"], "w") as f:  # after each round: a failing round leaves the ones before it
            json.dump(rounds, f)
