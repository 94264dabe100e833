"""Each stage's settings: one typed definition per stage (the variables at the top of run_pickaback/<stage>.sh).

A stage's settings are a frozen dataclass whose fields are the script's variables in lower case (`FINETUNE_EPOCHS`
-> `finetune_epochs`). The field says how the text of the variable is read, whether it decides if finished work is
redone (`identity`: the device a task ran on does not), and the entry-point flags that set it (the original's names,
several where the original's scripts differ, e.g. `--lr` / `--init_lr`).

The defaults live in one place, the script: `NAME="${NAME:-default}"` at its top, where users edit them. Python
reads them from there (`script_defaults`) and never repeats them; the environment overrides them, and an entry
point's flags override those. A task's manifest records the settings object whole (`record()`), as nanoGPT saves its
config in every checkpoint; a rerun compares the identity fields (`identity()`).
"""
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from utils.config import REPO_ROOT
from utils.errors import UserError
from utils.trainer import RECIPES, WIDTH_TOLERANCE
from utils_pickaback.backbone_search import CANDIDATE_CHOICES
from utils_pickaback.results import SELECTION_RULES

SCRIPTS = REPO_ROOT / "run_pickaback"
ASSIGNMENT = re.compile(r'^([A-Z_]+)="\$\{\1:-([^}]*)\}"\s*(#.*)?$')     # NAME="${NAME:-default}"


# ---- how a variable's text is read ------------------------------------------------------------------------------
def floats(text):
    return tuple(float(v) for v in str(text).split())


def ints(text):
    return tuple(int(v) for v in str(text).split())


def words(text):
    return tuple(str(text).split())


def switch(text):
    """1/0 (also true/false, yes/no, on/off) as a bool."""
    value = str(text).strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
        raise ValueError(text)
    return value in ("1", "true", "yes", "on")


def recipe(text):
    if text not in RECIPES:
        raise ValueError(text)
    return text


EXPECTED = {floats: "a list of numbers", ints: "a list of whole numbers", switch: "1 or 0",
            recipe: " or ".join(RECIPES), int: "a whole number", float: "a number"}


# ---- the range of a variable's value ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Valid:
    """What values a setting may take: `holds(value)`, and the words that say it ("a whole number >= 1")."""
    holds: Callable
    says: str


def _finite(value):
    return isinstance(value, int) or math.isfinite(value)


def at_least(low, what="a whole number"):
    """A count (or number) >= `low`."""
    return Valid(lambda v: _finite(v) and v >= low, f"{what} >= {low}")


def above(low, what="a finite number"):
    return Valid(lambda v: _finite(v) and v > low, f"{what} > {low}")


def fraction(low=0.0, high=1.0):
    """A finite number in [low, high]."""
    return Valid(lambda v: _finite(v) and low <= v <= high, f"a number in [{low}, {high}]")


def one_of(*choices):
    return Valid(lambda v: v in choices, "one of " + ", ".join(choices))


def sparsities():
    """The pruning schedule: target sparsities strictly increasing inside (0, 1)."""
    return Valid(lambda v: len(v) > 0 and all(_finite(x) and 0 < x < 1 for x in v) and
                 all(a < b for a, b in zip(v, v[1:], strict=False)),
                 "one or more sparsities, strictly increasing, each inside (0, 1) (e.g. '0.1 0.2 0.5')")


def each(valid, what):
    return Valid(lambda v: len(v) > 0 and all(valid.holds(x) for x in v), f"{what}, each {valid.says}")


SEED = Valid(lambda v: 0 <= v < 2 ** 32, "a whole number in [0, 2**32)")           # numpy's seed range
DEVICE = Valid(lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N")
NUM_CLASSES = Valid(lambda v: v == -1 or v >= 2, "-1 (the config's) or a whole number >= 2")
ANYTHING = Valid(lambda v: True, "")


def setting(parse, *flags, identity=True, valid=ANYTHING, help=""):
    """A stage variable read with `parse` and within `valid`; `flags` are the entry-point flags that set it (the
    first is the main one); `identity=False` for what is recorded but never makes finished work stale (the device,
    which rows to work on)."""
    return field(metadata={"parse": parse, "flags": flags, "identity": identity, "valid": valid, "help": help})


def script_defaults(stage):
    """{variable: default text} as written at the top of run_pickaback/<stage>.sh."""
    script = SCRIPTS / f"{stage}.sh"
    found = {}
    for line in script.read_text().splitlines():
        if m := ASSIGNMENT.match(line.strip()):
            found[m.group(1)] = m.group(2)
    return found


@dataclass(frozen=True)
class Settings:
    """The settings of one stage; subclasses name the stage (`STAGE`) and declare its variables."""
    STAGE: ClassVar[str] = ""

    @classmethod
    def variables(cls):
        """[(dataclass field, VARIABLE NAME)] in declaration order."""
        return [(f, f.name.upper()) for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls):
        """{variable: default text} from the stage script; a UserError when a variable's line is missing."""
        found = script_defaults(cls.STAGE)
        missing = [name for _, name in cls.variables() if name not in found]
        if missing:
            raise UserError(f"{SCRIPTS / (cls.STAGE + '.sh')} does not set {', '.join(missing)} in the form "
                            f"NAME=\"${{NAME:-value}}\": restore those lines.")
        return found

    @classmethod
    def parse(cls, texts, flags=None):
        """The settings from {VARIABLE: text} (every variable present), each value read as its type and checked
        against its range before anything uses it; a UserError names the variable, the value, the range and where to
        change it. `flags` ({VARIABLE: flag}) are the variables an entry point's flags set (the sentence then names
        the flag)."""
        flags, values = flags or {}, {}
        for f, name in cls.variables():
            parse, valid = f.metadata["parse"], f.metadata["valid"]
            try:
                values[f.name] = parse(texts[name])
            except ValueError:
                expected = EXPECTED.get(parse, f"a {getattr(parse, '__name__', 'value')}")
                raise UserError(cls.wrong(name, texts[name], expected, flags.get(name))) from None
            if not valid.holds(values[f.name]):
                raise UserError(cls.wrong(name, texts[name], valid.says, flags.get(name)))
        settings = cls(**values)
        settings.check()
        return settings

    @classmethod
    def wrong(cls, name, text, expected, flag=None):
        """The sentence for a value outside its type or range: the variable (or the flag that set it), the value,
        what it must be and where to change it."""
        if flag:
            return f"{flag} {text!r} must be {expected}: change the flag."
        return (f"{name}={text!r} must be {expected}: change it in the environment or at the top of "
                f"run_pickaback/{cls.STAGE}.sh.")

    @classmethod
    def from_environment(cls, env):
        """The script's defaults, overridden by the environment (an empty variable keeps the default)."""
        defaults = cls.defaults()
        return cls.parse({name: env.get(name) or defaults[name] for _, name in cls.variables()})

    def check(self):
        """What ties several settings together (each setting's own range is checked by `parse`)."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def record(self):
        """Every setting, as JSON data: what a manifest records."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def identity(self):
        """The settings that decide whether finished work still holds."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata["identity"]}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


SELECTIONS = (*SELECTION_RULES, "random", "scratch", "oracle")     # the rules compare_selection puts side by side


# ---- the stages' settings ----------------------------------------------------------------------------------------
# Field order is the order of the variables in the scripts. The flags are the entry points' (the original's names).
def arch():
    return setting(str, "--arch", valid=one_of("perceiver_io"), help="network architecture (perceiver_io)")


def seed():
    return setting(int, "--seed", valid=SEED, help="random seed")


def device():
    return setting(str, "--device", identity=False, valid=DEVICE,
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")


def amp():
    return setting(switch, "--amp", help="bf16 mixed precision (autocast) on CUDA, and on the CPU where supported")


def recipe_setting():
    return setting(recipe, "--recipe", help="original: SGD at the learning rate, x0.1 at 50%% and 80%% of the "
                                            "epochs; fast: Adam with linear warm-up and cosine decay (README)")


def num_classes():
    return setting(int, "--num_classes", valid=NUM_CLASSES, help="classes of the task; -1 = the config's")


def weight_decay():
    return setting(float, "--weight_decay", valid=at_least(0, "a finite number"),
                   help="L2 on the task's own linear weights")


def total_num_tasks():
    return setting(int, "--total_num_tasks", valid=at_least(1), help="tasks the network must leave room for")


def batch_size():
    return setting(int, "--batch_size", valid=at_least(1),
                   help="training batch size (the global batch under torchrun)")


@dataclass(frozen=True)
class BaselineSettings(Settings):
    STAGE: ClassVar[str] = "baseline"
    arch: str = arch()
    finetune_epochs: int = setting(int, "--epochs", "--finetune_epochs", valid=at_least(1), help="training epochs")
    num_classes: int = num_classes()
    init_lr: float = setting(float, "--lr", "--init_lr", valid=above(0), help="SGD learning rate of the weights")
    weight_decay: float = weight_decay()
    batch_size: int = batch_size()
    seed: int = seed()
    device: str = device()
    amp: bool = amp()
    recipe: str = recipe_setting()


@dataclass(frozen=True)
class GrowthSettings(Settings):
    """What CPG training with growth needs (the backbone and the target stage)."""
    arch: str = arch()
    epochs: int = setting(int, "--epochs", valid=at_least(1), help="finetuning epochs at each width")
    num_classes: int = num_classes()
    init_lr: float = setting(float, "--lr", "--init_lr", valid=above(0), help="learning rate of the weights")
    lr_mask: float = setting(float, "--lr_mask", valid=above(0), help="Adam learning rate of the piggymask")
    weight_decay: float = weight_decay()
    batch_size: int = batch_size()
    network_width_multiplier: float = setting(float, "--network_width_multiplier", valid=above(0),
                                              help="widen every latent feed-forward to this multiple first")
    max_network_width_multiplier: float = setting(float, "--max_allowed_network_width_multiplier",
                                                  "--max_network_width_multiplier", valid=above(0),
                                                  help="the widest the network may grow")
    width_step: float = setting(float, "--width_step", valid=above(0), help="how much wider each new attempt is")

    def check(self):
        if self.max_network_width_multiplier < self.network_width_multiplier - WIDTH_TOLERANCE:
            raise UserError(f"MAX_NETWORK_WIDTH_MULTIPLIER={self.max_network_width_multiplier} must be >= "
                            f"NETWORK_WIDTH_MULTIPLIER={self.network_width_multiplier} (the width the task starts "
                            f"at): raise the maximum or lower the start, in the environment or at the top of "
                            f"run_pickaback/{self.STAGE}.sh.")


@dataclass(frozen=True)
class CompactingSettings(GrowthSettings):
    """CPG training with growth, then compacting along a pruning schedule (the backbone stage, the sequence)."""
    pruning_lr: float = setting(float, "--pruning_lr", valid=above(0), help="SGD learning rate while pruning")
    nr_epoch_for_each_prune: int = setting(int, "--nr_epoch_for_each_prune", valid=at_least(1),
                                           help="epochs of each pruning stage")
    pruning_frequency: int = setting(int, "--pruning_frequency", valid=at_least(1),
                                     help="steps between mask updates")
    pruning_interval: int = setting(int, "--pruning_interval", valid=at_least(1),
                                    help="epochs over which the sparsity rises")
    pruning_schedule: tuple = setting(floats, "--pruning_schedule", valid=sparsities(),
                                      help="target sparsity of each pruning stage")
    total_num_tasks: int = total_num_tasks()


@dataclass(frozen=True)
class BackboneSettings(CompactingSettings):
    STAGE: ClassVar[str] = "wo_backbone"
    seed: int = seed()
    device: str = device()
    amp: bool = amp()
    recipe: str = recipe_setting()


@dataclass(frozen=True)
class ChoiceSettings(Settings):
    STAGE: ClassVar[str] = "select_pruning_ratio_of_backbone"
    arch: str = arch()
    allow_acc_loss: float = setting(float, "--allow_acc_loss", valid=fraction(),
                                    help="accuracy a ratio may lose")


@dataclass(frozen=True)
class SearchSettings(Settings):
    STAGE: ClassVar[str] = "find_backbone"
    arch: str = arch()
    target_id: str = setting(str, "--target_id", identity=False,
                             help="target task id (1-based), several as 1,3,5, or 'all'")
    candidates: str = setting(str, "--candidates", valid=one_of(*CANDIDATE_CHOICES),
                              help="all, same or cross (the candidates' modality)")
    selection: str = setting(str, "--selection", valid=one_of(*SELECTION_RULES),
                             help="similar (the most similar candidate) or original (the largest Euclidean-DDV "
                                  "distance, the original code's rule)")
    profile_size: int = setting(int, "--profile_size", valid=at_least(1),
                                help="profiling inputs per target (class-balanced)")
    epsilon: float = setting(float, "--epsilon", valid=above(0), help="mutation step of the profiling-input search")
    iterations: int = setting(int, "--iterations", valid=at_least(0),
                              help="mutation attempts of the profiling-input search")
    seed: int = seed()
    device: str = device()
    amp: bool = amp()


@dataclass(frozen=True)
class TransferSettings(Settings):
    STAGE: ClassVar[str] = "transfer_kv"
    arch: str = arch()
    csv_path: str = setting(str, "--csv_path", identity=False,
                            help="backbone search result (target_id,task_id); empty: pickaback_<cfg>_result.csv")


@dataclass(frozen=True)
class TargetSettings(GrowthSettings):
    STAGE: ClassVar[str] = "w_backbone_MM"
    total_num_tasks: int = total_num_tasks()
    seed: int = seed()
    device: str = device()
    amp: bool = amp()
    recipe: str = recipe_setting()
    result_csv: str = setting(str, "--result_csv", identity=False,
                              help="backbone search result; empty: pickaback_<cfg>_result.csv")


def order_spec(text):
    """ORDER: empty (the config's order), similar, random, or task ids separated by spaces or commas."""
    text = " ".join(str(text).replace(",", " ").split())
    if text in ("", "config", "similar", "random") or all(t.isdigit() for t in text.split()):
        return text or "config"
    raise ValueError(text)


EXPECTED[order_spec] = "config, similar, random or a list of task ids"


@dataclass(frozen=True)
class SequenceLearning(CompactingSettings):
    """Learning each task on top of the earlier ones in one network and keeping it at the chooser's ratio (the
    sequence stage, the clients)."""
    allow_acc_loss: float = setting(float, "--allow_acc_loss", valid=fraction(),
                                    help="accuracy a chosen pruning ratio may lose")
    reinit_free: bool = setting(switch, "--reinit_free",
                                help="1: the weights earlier tasks' pruning freed start freshly initialised for the "
                                     "next task; 0: at zero, where pruning left them (the original)")
    seed: int = seed()
    device: str = device()
    amp: bool = amp()
    recipe: str = recipe_setting()
    seeds: tuple = setting(ints, valid=each(SEED, "one or more seeds"), identity=False,
                           help="the seeds of the comparison (<stage>.sh <cfg> compare)")


@dataclass(frozen=True)
class SequenceSettings(SequenceLearning):
    """One network learns the tasks of ORDER in turn, compacting each (run_pickaback/sequence.sh). ORDER, FIRST and
    START make no step stale by themselves: a step's inputs are the order up to it and the checkpoint it starts
    from."""
    STAGE: ClassVar[str] = "sequence"
    order: str = setting(order_spec, "--order", identity=False,
                         help="config (the config's order), similar (next: the unlearned task most similar to those "
                              "learned), random, or task ids")
    first: int = setting(int, "--first", identity=False, valid=at_least(1), help="the first task of ORDER=similar")
    start: str = setting(str, "--start", identity=False, valid=one_of("scratch", "similar"),
                         help="scratch, or similar: the first task on the backbone the search picked for it")


@dataclass(frozen=True)
class CompareSettings(Settings):
    """Not a stage of run_all: the experiment that compares selection rules (run_pickaback/compare_selection.sh)."""
    STAGE: ClassVar[str] = "compare_selection"
    arch: str = arch()
    selections: tuple = setting(words, valid=each(one_of(*SELECTIONS), "one or more selection rules"))
    seeds: tuple = setting(ints, valid=each(SEED, "one or more seeds"))
    target_train_per_class: int = setting(int, valid=at_least(0))


CLIENT_SELECTIONS = (*SELECTION_RULES, "random", "scratch", "own")  # how a client picks the network it learns in
EXCHANGES = ("models", "profile")                  # what travels for a search: the networks, or the profile
ENGINES = ("simulation", "deployment", "local")    # what carries the messages: Flower's engines, or none


def superlink_address(text):
    text = text.strip()
    if text and not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}", text):
        raise ValueError(text)
    return text


EXPECTED[superlink_address] = "empty (start one here) or host:port of a running SuperLink's control API"


@dataclass(frozen=True)
class ClientsSettings(SequenceLearning):
    """Pick-a-back's devices (clients), each learning its own task sequence and borrowing from its peers in rounds
    (run_pickaback/clients.sh). Which clients, the rule, the protocol and the engine make no finished step stale by
    themselves: a step's inputs are the network it starts from and the task's baseline."""
    STAGE: ClassVar[str] = "clients"
    finetune_epochs: int = setting(int, "--finetune_epochs", valid=at_least(1),
                                   help="training epochs of each task's baseline (the criterion)")
    train_per_class: int = setting(int, "--train_per_class", valid=at_least(0),
                                   help="0: a client learns each task from all its training data; n: from n samples "
                                        "per class (its baseline from all): does borrowing pay when a task cannot be "
                                        "learnt alone?")
    num_clients: int = setting(int, "--num_clients", identity=False, valid=at_least(0),
                               help="0: the config's clients; n: the config's tasks dealt round-robin to n clients")
    selection: str = setting(str, "--selection", identity=False, valid=one_of(*CLIENT_SELECTIONS),
                             help="similar, original, random, scratch (a new network per task) or own (each client "
                                  "alone: its own CPG sequence)")
    exchange: str = setting(str, "--exchange", identity=False, valid=one_of(*EXCHANGES),
                            help="models (the learner receives the candidate networks) or profile (the learner "
                                 "sends its profiling inputs, the holders answer DDVs)")
    engine: str = setting(str, "--engine", identity=False, valid=one_of(*ENGINES),
                          help="simulation (Flower's, on Ray), deployment (a SuperLink and a SuperNode per client) "
                               "or local (one process, no Flower: the reference)")
    superlink: str = setting(superlink_address, "--superlink", identity=False,
                             help="deployment: host:port of a running SuperLink's control API (empty: start a "
                                  "SuperLink and the SuperNodes on this machine)")
    profile_size: int = setting(int, "--profile_size", identity=False, valid=at_least(2),
                                help="profiling inputs per target (class-balanced)")
    epsilon: float = setting(float, "--epsilon", identity=False, valid=above(0),
                             help="mutation step of the profiling-input search")
    iterations: int = setting(int, "--iterations", identity=False, valid=at_least(0),
                              help="mutation attempts of the profiling-input search")
    selections: tuple = setting(words, identity=False,
                                valid=each(one_of(*CLIENT_SELECTIONS), "one or more selection rules"),
                                help="the rules of the comparison (clients.sh <cfg> compare)")

    def baseline(self):
        """The settings a client trains its tasks' baselines with (stage 1's, from this run's variables)."""
        return BaselineSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BaselineSettings)})


SETTINGS = {cls.STAGE: cls for cls in (BaselineSettings, BackboneSettings, ChoiceSettings, SearchSettings,
                                       TransferSettings, TargetSettings, CompareSettings, SequenceSettings,
                                       ClientsSettings)}
RUN_ALL = ("baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv",
           "w_backbone_MM")                                       # the stages of run_all, in order
RUN_VARIABLES = ("TASK_IDS", "FORCE", "MMPAB_WORK_DIR", "TRACKER")     # read by the run, not by a stage


def stage_settings(stage, env=None):
    """The settings of `stage`: its script's variables, overridden by the environment `env` (default: this
    process's)."""
    return SETTINGS[stage].from_environment(os.environ if env is None else env)


def all_variables():
    """Every stage variable's name: what a worker's environment takes only from the stage environment."""
    return {name for cls in SETTINGS.values() for _, name in cls.variables()}
