"""The record of what produced a task's files: `Manifest` is the small JSON file (stage.json, utils/layout.py) a
stage writes beside a task's outputs once they are complete: the settings (and input fingerprints) that produced
them, the exact files it wrote and their sizes and sha256 digests. A later run skips a task whose manifest matches
its settings and whose files are all there, unchanged; the next stage reads exactly the files a manifest names.
"""
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from utils.checkpoint import CHECKPOINT_RE, atomic_write, load_checkpoint, locked, read_json
from utils.distributed import barrier, is_main_process
from utils.errors import UserError
from utils.layout import MANIFEST

FORMAT = 2                  # of a manifest: 2 records the settings object whole, with the inputs apart
MISSING = object()


def file_digest(path):
    """sha256 of a file, to tell whether a stage's input changed since its outputs were made. Computed once per
    version of the file in a process (a search's settings name every candidate's checkpoint for every target)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4096)
def _digest(path, inode, mtime_ns, size):               # a rewritten file (atomic: a new inode) is read again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """`settings`, `outputs` ({name: path}) and `results` of one finished task, in a JSON file beside its outputs.
    Paths are stored relative to the manifest's folder, so a run's folders can be moved or shared whole."""

    def __init__(self, path):
        self.path = Path(path)

    def read(self):
        return self.checked(read_json(self.path), f"{self.path} is not a stage record", "the stage")

    @property
    def running(self):
        """The marker a process keeps beside the manifest while it works on the task (utils/pipeline/lifecycle.py):
        <name>.running.json."""
        return self.path.with_name(f"{self.path.stem}.running.json")

    def checked(self, entry, what, stage):
        """`entry` (None: no record) when it is a stage record, else a UserError saying `what` and to rerun
        `stage`."""
        if entry is not None and not well_formed(entry):
            raise UserError(f"{what} (it lacks settings/outputs or holds values of another kind): delete it and rerun "
                            f"{stage}.")
        return entry

    def outputs(self):
        data = self.read() or {"outputs": {}}
        return {k: (self.path.parent / v).resolve() for k, v in data["outputs"].items()}

    def stale_reason(self, identity):
        """None when the task is finished with `identity` ({stage, settings, inputs}) and its files are all there;
        else why it is not, in a few words. The record holds every setting; only those `identity` names count."""
        data = self.read()
        if not data:
            return "not finished"
        if data.get("format") != FORMAT:
            return f"recorded by an earlier version of this repository ({self.path.name} without format {FORMAT})"
        identity = json.loads(json.dumps(identity))
        if data.get("stage") != identity["stage"]:
            return f"recorded by stage {data.get('stage')}"
        changed = self.settings_changes(identity["settings"], data)
        if changed:
            return f"settings changed ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})"
        inputs = data.get("inputs", {})
        changed = sorted(k for k in set(inputs) | set(identity["inputs"]) if inputs.get(k) != identity["inputs"].get(k))
        if changed:
            return f"inputs changed ({', '.join(changed)})"
        absent = [p.name for p in self.missing_outputs()]
        if absent:
            return f"files missing ({', '.join(absent)})"
        damaged = self.damaged_outputs()
        if damaged:
            return f"{', '.join(str(p) for p in damaged)} changed or damaged since it was written (size or sha256)"
        return None

    def settings_changes(self, settings, data=None):
        """["NAME recorded -> now"] of the settings in `settings` (those that decide whether finished work holds)
        that differ from the recorded ones."""
        recorded = (data or self.read() or {}).get("settings", {})
        settings = json.loads(json.dumps(settings))
        return [f"{k.upper()} {recorded.get(k, 'unset')!r} -> {v!r}" for k, v in settings.items()
                if recorded.get(k, MISSING) != v]

    def damaged_outputs(self, digests=True):
        """The files the record names that are missing or whose size or sha256 is no longer what it recorded
        (truncated, overwritten, edited). Records written before digests were kept: their checkpoints must still
        load. `digests=False` is the quick check (sizes only, no file read; tools/status.py)."""
        data, outputs = self.read() or {}, self.outputs()
        if "files" not in data:
            return [p for p in outputs.values() if digests and p.name.endswith(".pth.tar") and
                    not readable_checkpoint(p)]
        damaged = []
        for name, meta in data["files"].items():
            path = outputs.get(name)
            if path is None or not path.is_file() or path.stat().st_size != meta.get("size") or \
                    (digests and file_digest(path) != meta.get("sha256")):
                damaged.append(path or name)
        return damaged

    def output(self, name):
        return self.outputs().get(name)

    def missing_outputs(self):
        """The files the record names that do not exist (none without a record): a stage's task is complete when
        its record exists and this is empty, whatever settings made it."""
        return [p for p in self.outputs().values() if not p.is_file()]

    def results(self):
        return (self.read() or {}).get("results", {})

    def clear(self):
        """Mark the task unfinished before its outputs start being replaced."""
        if is_main_process():
            self.path.unlink(missing_ok=True)
        barrier()

    def entry(self, record, outputs, results=None, shared=()):
        """The record of a finished task: `record` ({stage, settings, inputs}, utils.pipeline.lifecycle), the files
        it wrote (paths relative to the manifest's folder), the size and sha256 of each (except the `shared` ones,
        which other tasks rewrite: their stage checks its part of them) and its results."""
        folder = self.path.parent.resolve()
        files = {k: {"size": Path(v).stat().st_size, "sha256": file_digest(v)} for k, v in outputs.items()
                 if k not in shared}
        return {"format": FORMAT, **record,
                "outputs": {k: os.path.relpath(Path(v).resolve(), folder) for k, v in outputs.items()},
                "files": files, "results": results or {}}

    def write(self, record, outputs, results=None, shared=()):
        data = self.entry(record, outputs, results, shared)
        atomic_write(self.path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def well_formed(entry):
    """Whether `entry` has a stage record's shape: settings and outputs ({name: path}) objects, and results, inputs
    and files ({name: {size, sha256}}) objects where it has them; a reader then never meets a value it does not
    expect."""
    def objects(value, inner=object):
        return isinstance(value, dict) and all(isinstance(v, inner) for v in value.values())
    return isinstance(entry, dict) and objects(entry.get("settings")) and objects(entry.get("outputs"), str) and \
        all(objects(entry.get(k, {})) for k in ("results", "inputs")) and objects(entry.get("files", {}), dict)


class SearchManifest(Manifest):
    """The search's manifests, one entry per target in one JSON file beside the result CSVs."""

    def __init__(self, path, target):
        super().__init__(path)
        self.target = str(target)

    def read(self):
        data = read_json(self.path) or {}
        return self.checked(data.get(self.target), f"{self.path} holds no stage record for target {self.target}",
                            "the backbone search")

    def write(self, record, outputs, results=None, shared=()):
        with locked(self.path):
            data = read_json(self.path) or {}
            data[self.target] = self.entry(record, outputs, results, shared)
            atomic_write(self.path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def readable_checkpoint(path):
    try:
        load_checkpoint(path)
    except UserError:
        return False
    return True


def task_checkpoint(folder, what, manifest=None, key="checkpoint"):
    """The checkpoint a stage wrote in `folder`, as its manifest names it; for a folder without one (checkpoints
    placed by hand), its only checkpoint. Never "the highest epoch number": that may be a stale earlier run's."""
    folder = Path(folder)
    manifest = Manifest(manifest or folder / MANIFEST)
    path = manifest.output(key) if manifest.path.is_file() else None
    if path is not None:
        if not path.is_file():
            raise UserError(f"{manifest.path} names {path}, which does not exist: {what}.")
        return path
    found = sorted(p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name)) if folder.is_dir() else []
    if not found:
        raise UserError(f"no checkpoint-<epoch>.pth.tar in {folder}: {what}.")
    if len(found) > 1:
        raise UserError(f"{folder} holds {len(found)} checkpoints ({', '.join(p.name for p in found)}) and no "
                        f"{MANIFEST} saying which one its stage wrote: remove the stale ones or {what}.")
    return found[0]
