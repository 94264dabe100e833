"""Where every stage's files live: the one definition of the stage folders and files (the original's names,
relative to the working folder). `Layout` names every path of one config's run; `TaskFolder` names what one task's
working folder holds (its checkpoints, record, log, curves CSV, progress and stage record). The record of what
produced a task's files (its manifest, stage.json) is read and written by utils/manifest.py.
"""
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS, LOGS = "checkpoints_perceiver_io", "logs_perceiver_io"
BASELINE_STAGE = "baseline_scratch"
BACKBONE_STAGE = "CPG_single_scratch_woexp"
TARGET_STAGE = "CPG_fromsingle_scratch_woexp_target"
COMPARISON_STAGE = "CPG_compare_selection"
CLIENTS_STAGE = "clients"
SEQUENCE_STAGE = "CPG_sequence"
# the stage each stage folder belongs to: the first part of the name of a task's training curves
STAGE_OF_FOLDER = {BASELINE_STAGE: "baseline", BACKBONE_STAGE: "wo_backbone", TARGET_STAGE: "w_backbone_MM",
                   COMPARISON_STAGE: "compare_selection", SEQUENCE_STAGE: "sequence"}
MANIFEST = "stage.json"     # a task's record (utils/manifest.py), beside its outputs
RESUME = "resume.pt"        # a training step's resume state, in the folder it writes its checkpoint to


def sparsity_key(value):
    """Record keys and pruning-stage folder names as the original's Python float strings: '0.1', '0.95'."""
    return str(float(value))


def resume_file(folder):
    """The resume state of the training step that writes its checkpoint to `folder`."""
    return Path(folder) / RESUME


@dataclass(frozen=True)
class TaskFolder:
    """One task's working folder: the checkpoint of its finetuning (scratch/, or the folder itself for a baseline),
    each pruning stage (gradual_prune/<s>/), the record of accuracy per sparsity, the log, the per-epoch CSV, the
    progress of an interrupted run and the stage record."""
    root: Path

    @property
    def scratch(self):
        return self.root / "scratch"

    @property
    def gradual_prune(self):
        return self.root / "gradual_prune"

    def prune_stage(self, sparsity):
        return self.gradual_prune / sparsity_key(sparsity)

    @property
    def record(self):
        return self.gradual_prune / "record.txt"

    @property
    def log(self):
        return self.root / "train.log"

    @property
    def csv(self):
        return self.root / "train.csv"

    @property
    def progress(self):
        return self.root / "progress.json"

    @property
    def manifest(self):
        return self.root / MANIFEST

    @property
    def resume(self):
        """The resume state of a step that writes into the folder itself (a baseline's training)."""
        return resume_file(self.root)

    def step_resumes(self):
        """The resume states of the CPG steps: finetuning's, then each pruning stage's."""
        return [resume_file(self.scratch), *sorted(self.gradual_prune.glob(f"*/{RESUME}"))]


@dataclass(frozen=True)
class Layout:
    """Every path of one dataset config's run, under `work_dir` (the repository root or $MMPAB_WORK_DIR)."""
    work_dir: Path
    config: str
    arch: str = "perceiver_io"
    checkpoint_root: Path = None          # default <work_dir>/checkpoints_perceiver_io

    @property
    def checkpoints(self):
        return Path(self.checkpoint_root or Path(self.work_dir) / CHECKPOINTS)

    def _stage(self, stage, *parts):
        return self.checkpoints / stage / self.arch / self.config / Path(*parts)

    # ---- logs and tables --------------------------------------------------------------------------------------
    @property
    def logs(self):
        return Path(self.work_dir) / LOGS

    @property
    def baseline_acc_file(self):
        return self.logs / f"baseline_{self.config}_acc.txt"

    @property
    def target_acc_csv(self):
        return self.logs / f"w_backbone_{self.config}_acc.csv"

    @property
    def run_lock(self):
        """Held by the run working on this folder and config (utils/pipeline/runlock.py), only while it runs."""
        return self.logs / f"run_{self.config}.lock"

    def stage_log(self, stage):
        return self.logs / f"{stage}_{self.config}.log"

    @property
    def result_csv(self):
        return Path(self.work_dir) / f"pickaback_{self.config}_result.csv"

    @property
    def table_csv(self):
        return Path(self.work_dir) / f"pickback_{self.config}_table.csv"         # the original's spelling

    @property
    def search_manifest(self):
        return Path(self.work_dir) / f"pickaback_{self.config}_{MANIFEST}"

    # ---- stage 1: baselines -------------------------------------------------------------------------------------
    def baseline(self, group):
        return TaskFolder(self._stage(BASELINE_STAGE, group))

    # ---- stage 2-3: CPG backbones (R) ---------------------------------------------------------------------------
    def backbone(self, group):
        return TaskFolder(self._stage(BACKBONE_STAGE, group))

    def choice_manifest(self, group):
        return self.backbone(group).gradual_prune / "choice.json"

    # ---- stage 5: k/v transfer ---------------------------------------------------------------------------------
    def kv_transfer_file(self, backbone_checkpoint, target_id):
        stem = Path(backbone_checkpoint).name.removesuffix(".pth.tar")
        return Path(backbone_checkpoint).parent / f"{stem}_kv_transfer_{int(target_id)}.pth.tar"

    def kv_manifest(self, backbone_group, target_id):
        return self.backbone(backbone_group).gradual_prune / f"kv_transfer_{int(target_id)}.json"

    # ---- stage 6: targets ---------------------------------------------------------------------------------------
    def target(self, backbone_group, target_group):
        return TaskFolder(self._stage(TARGET_STAGE, backbone_group, target_group))

    # ---- the selection-rule comparison: one training per (seed, backbone or "scratch", target) ---------------
    def comparison(self, seed, backbone_group, target_group):
        """The folder of `target_group` trained on `backbone_group` (None: alone, in the folder named scratch)."""
        return TaskFolder(self._stage(COMPARISON_STAGE, f"seed{int(seed)}", backbone_group or "scratch",
                                      target_group))

    @property
    def comparison_csv(self):
        return self.logs / f"compare_selection_{self.config}.csv"

    # ---- the sequence run: one network over the tasks of an order -------------------------------------------
    def sequence_step(self, run, step):
        """The folder of the `step`-th task (1-based) of the sequence run `run` ("default", or "<rule>_seed<S>")."""
        return TaskFolder(self._stage(SEQUENCE_STAGE, run, f"task{int(step):02d}"))

    @property
    def sequence_csv(self):
        return self.logs / f"sequence_{self.config}.csv"

    # ---- clients: Pick-a-back's devices (utils/clients/) --------------------------------------------------------
    def client(self, client, run="default"):
        """The folder of everything a client (a Pick-a-back device) holds: its baselines, one folder per round it
        learned a task in (the network it learned it in), its record of which network holds which task. The
        default run's clients are in clients/<cfg>/<client>, the comparison's runs in
        clients_compare/<cfg>/<run>/<client>."""
        if run == "default":
            return self.checkpoints / CLIENTS_STAGE / self.config / client
        return self.checkpoints / f"{CLIENTS_STAGE}_compare" / self.config / run / client

    def client_baselines(self, client, seed):
        """A client's baselines of one seed, shared by every run of the seed (they depend on no pick)."""
        return self.client(client) / "baseline" / f"seed{int(seed)}"

    def client_baseline(self, client, group, seed):
        return TaskFolder(self.client_baselines(client, seed) / group)

    def client_baseline_acc(self, client, seed):
        return self.client_baselines(client, seed) / "acc.txt"

    def client_round(self, client, round_, run="default"):
        """The folder of the task a client learns in round `round_` (a sequence step: scratch/, gradual_prune/,
        record.txt, train.log, train.csv, stage.json) and of the networks it received for it (received/)."""
        return TaskFolder(self.client(client, run) / f"round{int(round_):02d}")

    @property
    def clients_csv(self):
        return self.logs / f"{CLIENTS_STAGE}_{self.config}.csv"

    @property
    def clients_messages_csv(self):
        return self.logs / f"{CLIENTS_STAGE}_{self.config}_messages.csv"

    # ---- training curves (utils/tracking.py) ------------------------------------------------------------------
    def curves_name(self, folder, stage):
        """The name of the training curves of the task whose files are in `folder`: <stage>/<config>/<the task's
        folder below the stage's> (e.g. w_backbone_MM/oxford/group1/group7); for a folder outside the stage
        folders (an entry point's --save_folder), <stage>/<config>/<its name>."""
        try:
            parts = Path(folder).resolve().relative_to(self.checkpoints.resolve()).parts
        except ValueError:
            return "/".join((stage, self.config, Path(folder).name))
        if parts and parts[0].startswith(CLIENTS_STAGE):              # clients[_compare]/<cfg>/[<run>/]<client>/...
            return "/".join(parts)
        if len(parts) > 3 and parts[1:3] == (self.arch, self.config):
            return "/".join((STAGE_OF_FOLDER.get(parts[0], parts[0]), self.config, *parts[3:]))
        return "/".join((stage, self.config, *parts))

    # ---- the report (tools/report.py) ---------------------------------------------------------------------------
    def report(self, suffix=".md"):
        """logs_perceiver_io/report_<cfg><suffix>: the report, its CSV and its figures (report_<cfg>_<name>.png)."""
        return self.logs / f"report_{self.config}{suffix}"
