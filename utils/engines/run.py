"""A clients run (run_pickaback/clients.sh) on the engine ENGINE names: `local` (utils/clients/local.py, no engine),
`simulation` or `deployment` (Flower, utils/engines/flower.py). The comparison (`clients.sh <cfg> compare`) is one
run per rule of SELECTIONS and seed of SEEDS, the rules that search (similar, original) under both exchange
protocols: their learning is shared (the second protocol's run finds every step finished) and only the bytes
differ."""
import logging

from utils.clients.coordinator import run_spec
from utils.pipeline.context import Run
from utils.pipeline.runlock import holding
from utils.pipeline.settings import EXCHANGES, SELECTION_RULES, ClientsSettings

log = logging.getLogger("root")
CLIENT_FACTORY = "utils.clients.device:client_from"
COORDINATE = "utils.clients.coordinator:coordinate"


def run_specs(config, env, compare=False):
    """[spec] of the runs to carry out, every one checked (settings, clients) before the first starts."""
    s = ClientsSettings.from_environment(env)
    if not compare:
        return [run_spec(config, env)]
    specs = []
    for rule in s.selections:
        for seed in s.seeds:
            for exchange in (EXCHANGES if rule in SELECTION_RULES else (s.exchange,)):
                specs.append(run_spec(config, env, run=f"{rule}_seed{seed}", SELECTION=rule, SEED=seed,
                                      EXCHANGE=exchange))
    return specs


def carry(spec, s):
    """One run on the engine of its settings."""
    if s.engine == "local":
        from utils.clients.local import run_local
        run_local(spec)
        return
    from utils.engines import flower                          # Flower only where it carries the messages
    flower.run(s.engine, spec, client_factory=CLIENT_FACTORY, coordinate=COORDINATE, superlink=s.superlink or None)


def run_clients(config, env, compare=False):
    """Every round of the clients run (or of every comparison run) of dataset config `config`; returns the Run."""
    run = Run.from_environment(config, env)
    specs = run_specs(config, env, compare)
    with holding(run.layout().run_lock, "clients"):
        for n, spec in enumerate(specs, 1):
            s = ClientsSettings.from_environment(spec["env"])
            if compare:
                log.info(f"==== clients comparison {n}/{len(specs)}: SELECTION={s.selection}, SEED={s.seed}, "
                         f"EXCHANGE={s.exchange}")
            carry(spec, s)
    return run
