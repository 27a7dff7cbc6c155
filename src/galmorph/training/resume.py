"""Resuming an interrupted training (#28): a killed rank, a restarted TrainJob node, a Ctrl-C.

Rank 0 keeps ``<out_dir>/training-state.json``: the training's fingerprint (its config without the fields
that only say how it runs, :data:`~galmorph.training.config.LAUNCH_FIELDS`, and the manifest's rows), its
status (``running`` / ``complete``), its MLflow parent and trial runs, and per trial ``running`` or
``done`` (with what the best-trial choice needs). A new training in the same ``out_dir`` with the same
fingerprint while the state says ``running`` resumes it (:func:`plan`):

* a ``done`` trial is not trained again (its MLflow run is complete; its best checkpoint is reloaded);
* a ``running`` trial with a ``trial-N/checkpoints/resume.ckpt`` (saved at the end of every epoch; Lightning's
  ``last.ckpt`` is only rewritten with the best one) goes on from it (Lightning ``ckpt_path``: epoch,
  optimiser, early-stopping and best-checkpoint state), logging into its MLflow run;
* the rest train from the start;

and rank 0 logs into the same MLflow parent run, so an interrupted and resumed training is still one run
with one model version. A ``complete`` training, another config or another manifest starts afresh.

Every rank plans from the files as they are when it starts, so rank 0 writes the state only once all ranks
have planned: at the start of a fit (after DDP's first collective, :class:`StateCallback`) and later. For
several nodes, ``out_dir`` must be on storage all nodes share (the TrainJob's data volume).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.training.config import LAUNCH_FIELDS, TrainConfig

STATE_FILE = "training-state.json"
#: Checkpoint (``trial-N/checkpoints/<name>.ckpt``) written at every epoch's end, what a resumed trial goes on from.
RESUME_CHECKPOINT = "resume"
_MANIFEST_COLUMNS = ("object_id", "image_uri", "label", "task", "mirrored")


def fingerprint(cfg: TrainConfig, manifest: pd.DataFrame) -> str:
    """What makes two trainings the same one: the config without :data:`LAUNCH_FIELDS` and the manifest's rows."""
    h = hashlib.sha256(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in LAUNCH_FIELDS},
                                  sort_keys=True, default=str).encode())
    cols = [c for c in _MANIFEST_COLUMNS if c in manifest.columns]
    h.update(",".join(cols).encode())
    if cols and len(manifest):
        h.update(pd.util.hash_pandas_object(manifest[cols].astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:24]


def checkpoint_dir(work: Path, trial: int) -> Path:
    return Path(work) / f"trial-{trial}" / "checkpoints"


def read_state(work: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(work) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class ResumePlan:
    """What each trial does in this attempt: ``fresh``, ``resume`` (from its last checkpoint) or ``done``."""

    fingerprint: str
    training_id: str
    resuming: bool
    trials: list[str]
    state: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, work: Path, trial: int) -> str | None:
        """The checkpoint trial ``trial`` goes on from (None: from the start)."""
        if self.trials[trial] != "resume":
            return None
        return str(checkpoint_dir(work, trial) / f"{RESUME_CHECKPOINT}.ckpt")

    def trial_state(self, trial: int) -> dict[str, Any]:
        return dict(self.state.get("trials", {}).get(str(trial), {}))


def plan(cfg: TrainConfig, manifest: pd.DataFrame, work: Path) -> ResumePlan:
    """The :class:`ResumePlan` of a training of ``cfg`` on ``manifest`` in ``work`` (see the module doc)."""
    fp = fingerprint(cfg, manifest)
    st = read_state(work)
    fresh = ResumePlan(fp, uuid.uuid4().hex, False, ["fresh"] * cfg.trials)
    if (not cfg.auto_resume or cfg.resume_from or st.get("fingerprint") != fp or st.get("status") != "running"
            or not st.get("id")):
        return fresh
    trials = []
    for t in range(cfg.trials):
        ts = st.get("trials", {}).get(str(t), {})
        if ts.get("status") == "done" and Path(ts.get("best_checkpoint", "")).is_file():
            trials.append("done")
        elif ts.get("status") == "running" and (checkpoint_dir(work, t) / f"{RESUME_CHECKPOINT}.ckpt").is_file():
            trials.append("resume")
        else:
            trials.append("fresh")
    if all(t == "fresh" for t in trials) and not st.get("parent_run_id"):
        return fresh
    return ResumePlan(fp, st["id"], True, trials, st)


class StateWriter:
    """Rank 0's writer of ``training-state.json`` (atomic replace)."""

    def __init__(self, work: Path, plan_: ResumePlan):
        self.path = Path(work) / STATE_FILE
        base = plan_.state if plan_.resuming else {}
        self.state: dict[str, Any] = {"id": plan_.training_id, "fingerprint": plan_.fingerprint,
                                      "status": "running", "parent_run_id": base.get("parent_run_id"),
                                      "trial_run_ids": dict(base.get("trial_run_ids", {})),
                                      "trials": {k: v for k, v in base.get("trials", {}).items()
                                                 if v.get("status") == "done"},
                                      "attempts": int(base.get("attempts", 0)) + 1}
        self.armed = False  # nothing is written before all ranks have planned (the first fit's start)

    def write(self) -> None:
        if not self.armed:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=float))
        os.replace(tmp, self.path)

    def runs(self, parent_run_id: str, trial_run_ids: dict[int, str]) -> None:
        self.state["parent_run_id"] = parent_run_id
        self.state["trial_run_ids"] = {str(k): v for k, v in trial_run_ids.items()}
        self.write()

    def trial_started(self, trial: int) -> None:
        self.armed = True
        self.state["trials"][str(trial)] = {"status": "running"}
        self.write()

    def trial_done(self, trial: int, info: dict[str, Any]) -> None:
        self.state["trials"][str(trial)] = {"status": "done", **info}
        self.write()

    def complete(self) -> None:
        self.armed = True
        self.state["status"] = "complete"
        self.write()


def state_callback(writer: StateWriter, trial: int):
    """A Lightning callback that records the trial as started when its fit starts (rank 0; by then every rank
    has planned, since DDP's setup is a collective)."""
    import lightning as L

    class StateCallback(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if trainer.is_global_zero:
                writer.trial_started(trial)

    return StateCallback()


__all__ = ["RESUME_CHECKPOINT", "ResumePlan", "STATE_FILE", "StateWriter", "checkpoint_dir", "fingerprint", "plan",
           "read_state", "state_callback"]
