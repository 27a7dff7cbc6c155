"""Data-parallel training (#28): the cost of Lightning DDP over N CPU processes against one process at the
same total batch, and whether the two train the same model. Writes benchmarks/results/ddp.{json,md}.

Both runs train the chirality ``tiny`` preset (ResNet-18) on simulated galaxies (no real data needed), 64 px,
no augmentation, SGD, through ``galmorph train --devices N --json`` (the user's command) into a private local
MLflow store:

* one process with ``data_order=sharded`` (it steps through the global batches a DDP run takes);
* ``--devices`` processes (DDP, gloo), launched under torchrun by the library, each taking its shard of every
  global batch; batch norm over the global batch.

Reported: wall time of each ``galmorph train`` call (process start-up, cache, fit, evaluation, export), training img/s
(all ranks' images over the wall time of the training part of each epoch, from the second epoch), the
largest difference of the two registered models' class probabilities over all images, and the test
accuracies. On a machine with few cores the DDP processes share them with each other (and with anything
else running): the figures are a correctness run and the cost of the machinery, not a speed result; a speed
result needs one GPU (or a set of dedicated cores) per process.

    uv run python benchmarks/bench_ddp.py [--n 400] [--epochs 3] [--devices 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from _common import training_logging, machine, quiet_line

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or HERE / "results")
log = logging.getLogger("bench_ddp")


def run_case(devices: int, manifest: Path, base: dict, tracking: str, work: Path) -> dict:
    """One ``galmorph train --json`` call (the user's entry: DDP launch, logging, registration included);
    the epoch figures are read back from its MLflow run."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    galmorph = Path(sys.executable).with_name("galmorph")
    cmd = [str(galmorph), "train", "--task", "chirality", "--preset", "tiny", "--manifest", str(manifest),
           "--devices", str(devices), "--tracking-uri", tracking, "--experiment", f"bench-ddp-{devices}",
           "--out-dir", str(work / f"devices-{devices}"), "--json",
           *[a for k, v in base.items() for a in ("--set", f"{k}={v}")]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"galmorph train --devices {devices} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    m = MlflowClient(tracking_uri=tracking).get_run(out["run_id"]).data.metrics
    return {"devices": devices, "wall_s": round(wall, 1), "model_uri": out["model_uri"], "epochs": int(m["epochs"]),
            "global_step": int(m["global_step"]), "train_images_per_s": m.get("train_images_per_s"),
            "after_first_epoch": m.get("train_images_per_s_after_first_epoch"),
            "test_accuracy": m.get("test_accuracy"), "best_val_loss": m.get("best_val_loss")}


def max_prob_difference(uri_a: str, uri_b: str, manifest: Path, image_size: int, tracking: str) -> float:
    import mlflow
    import pandas as pd
    import torch

    from galmorph.datasets.images import ManifestImageDataset

    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    a, b = mlflow.pytorch.load_model(uri_a), mlflow.pytorch.load_model(uri_b)
    ds = ManifestImageDataset(pd.read_parquet(manifest), image_size, 3)
    worst = 0.0
    with torch.inference_mode():
        for start in range(0, len(ds), 64):
            x = torch.stack([ds[i][0] for i in range(start, min(start + 64, len(ds)))])
            worst = max(worst, float((torch.softmax(a(x), 1) - torch.softmax(b(x), 1)).abs().max()))
    return worst


def write(res: dict, out: Path) -> None:
    m = res["machine"]
    one, ddp = res["cases"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp.json").write_text(json.dumps(res, indent=2, default=float))
    rate = lambda c: f"{c['after_first_epoch']:.1f}" if c["after_first_epoch"] else "n/a"  # noqa: E731
    lines = ["# Data-parallel training: DDP against one process (#28)", "",
             f"{quiet_line(m)}; {m['cpus']} CPUs, torch {m.get('torch')}, {m['date']}. Load average at the end: "
             f"{res['load_avg_at_end']}.", "",
             f"**A correctness run, not a speed result:** on {m['cpus']} CPU cores the {ddp['devices']} DDP processes "
             "share the cores with each other (and with whatever else runs), so their img/s says what the "
             "machinery costs here, not what DDP gains with a GPU (or dedicated cores) per process.", "",
             f"Chirality `tiny` preset ({res['arch']}, {res['image_size']} px, SGD, no augmentation) on {res['n']} "
             f"simulated galaxies, {res['epochs']} epochs, the same total batch of {res['batch_size']} "
             f"({res['batch_size'] // ddp['devices']} per process under DDP); the one-process run steps through the "
             "same global batches (`data_order=sharded`).", "",
             "| processes | wall s (start-up, fit, evaluation, export) | training img/s (epochs 2..N) | epochs | "
             "optimiser steps | test accuracy | best val loss |", "|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        lines.append(f"| {c['devices']} | {c['wall_s']} | {rate(c)} | {c['epochs']} | {c['global_step']} | "
                     f"{c['test_accuracy']:.4f} | {c['best_val_loss']:.5f} |")
    ratio = f"{res['rate_ratio']:.2f}x" if res["rate_ratio"] else "n/a"
    lines += ["", f"Largest difference of the two registered models' class probabilities over all {res['n']} "
              f"images: **{res['max_prob_difference']:.2e}** (the same optimiser steps; float32 summation order differs between the two, and 24 SGD steps at lr 0.05 amplify it).", "",
              f"DDP / one process: wall time {res['wall_ratio']:.2f}x, training img/s (epochs 2..N) {ratio}.", ""]
    (out / "ddp.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="simulated galaxies")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--devices", type=int, default=2, help="DDP processes")
    ap.add_argument("--batch-size", type=int, default=32, help="total batch (a multiple of --devices)")
    ap.add_argument("--quick", action="store_true", help="tiny run that checks the script (not a result)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.epochs = 48, 2
    training_logging()
    m = machine()
    print(quiet_line(m), flush=True)
    print("A correctness run on CPU, not a speed result: the DDP processes share this machine's cores.", flush=True)

    from galmorph.simulate import simulate_dataset

    work = Path(tempfile.mkdtemp(prefix="galmorph-bench-ddp-"))
    manifest = Path(simulate_dataset(work / "sim", a.n, seed=0, task="chirality", size=64, progress=False)["manifest"])
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    base = {"image_size": 64, "optimizer": "sgd", "lr": 0.05, "rotation_deg": 0.0, "zoom": 0.0,
            "max_epochs": a.epochs, "min_epochs": a.epochs, "patience": a.epochs, "batch_size": a.batch_size,
            "progress": False, "accelerator": "cpu", "data_order": "sharded", "trials": 1}
    cases = [run_case(d, manifest, base, tracking, work) for d in (1, a.devices)]
    for c in cases:
        log.info("devices=%d: %s", c["devices"], c)
    diff = max_prob_difference(cases[0]["model_uri"], cases[1]["model_uri"], manifest, 64, tracking)
    one, ddp = cases
    res = {"machine": m, "quick": a.quick, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "n": a.n,
           "epochs": a.epochs, "batch_size": a.batch_size, "image_size": 64, "arch": "resnet18", "cases": cases,
           "max_prob_difference": diff, "wall_ratio": ddp["wall_s"] / one["wall_s"],
           "rate_ratio": (ddp["after_first_epoch"] / one["after_first_epoch"]
                          if ddp["after_first_epoch"] and one["after_first_epoch"] else None),
           "note": "correctness run on CPU: the DDP processes share the machine's cores; not a speed result"}
    write(res, OUT / ("quick" if a.quick else ""))


if __name__ == "__main__":
    main()
