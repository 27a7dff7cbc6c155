"""Training benchmark on real data (not CI): chirality ResNet18 and ResNet18+CE on gz1_chirality, arms
EfficientNet-B0 (frozen) on gz2_arms, at a reduced image size on this CPU, through the full
``galmorph.training.train`` path (real local MLflow server). Writes benchmarks/results/train.{json,md}.

Held-out per-class precision/recall/F1 are reported beside the published numbers, together with the
measured training throughput (images/s over training batches, data loading + augmentation included)
and the forward+backward ceiling of the same network, image size and batch on in-memory tensors,
measured in the same run.

    uv run python benchmarks/bench_train.py [--per-class 150] [--epochs 8] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from galmorph.manifest import write_manifest
from galmorph.settings import REPO_ROOT, Settings, get_settings

RESULTS = Path(os.environ.get("GALMORPH_BENCH_OUT") or REPO_ROOT / "benchmarks" / "results")  # quick runs: results/quick
log = logging.getLogger("bench_train")

PUBLISHED = {
    "chirality": "CE_ResNet50 test accuracy 95.1 % (full GZ1 chirality sample, 224 px, ImageNet-size training)",
    "arms": "EfficientNet-B0 (frozen, pretrained) F1 >= 0.8 for most arm classes (224 px crop of 424)",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fwd_bwd_ceiling(cfg, batch: int, steps: int = 8) -> float:
    """Images/s of forward+backward+optimiser step on random in-memory tensors (no data loading), from
    the fastest of ``steps`` timed steps (a ceiling: the least disturbed step on a shared CPU)."""
    from galmorph.models.classifier import GalaxyClassifier

    torch.manual_seed(0)
    model = GalaxyClassifier(cfg.to_dict())
    opt = model.configure_optimizers()
    model.train()
    x = torch.rand(batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    y = torch.randint(0, len(cfg.classes()), (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / min(times)


def chirality_manifest(data_root: Path, per_class: int, seed: int, out: Path) -> Path:
    from galmorph.ingest import ingest_gz1_chirality

    man, _ = ingest_gz1_chirality(data_root / "gz1_chirality" / "labels.csv", data_root / "gz1_chirality" / "images",
                                  data_root=data_root)
    sub = (man.groupby("label", group_keys=False)
           .apply(lambda g: g.sample(min(per_class, len(g)), random_state=seed)).reset_index(drop=True))
    return write_manifest(sub, out, kind="bench-gz1-chirality-balanced")


def arms_manifest(data_root: Path, out: Path) -> Path:
    from galmorph.ingest import ingest_gz2_arms

    man, _ = ingest_gz2_arms(data_root / "gz2_arms" / "labels.csv", data_root / "gz2_arms" / "images",
                             data_root=data_root)
    return write_manifest(man, out, kind="bench-gz2-arms")


def run_case(name: str, task: str, preset: str, overrides: dict, manifest: Path, tracking_uri: str,
             data_root: Path, work: Path) -> dict:
    from galmorph.training import resolve_config, train

    cfg = resolve_config(task, preset, overrides)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    ceiling_before = fwd_bwd_ceiling(cfg, cfg.batch_size)
    t0 = time.perf_counter()
    res = train(task, preset, overrides, manifest=manifest, tracking_uri=tracking_uri, experiment="bench-train",
                register=False, data_root=data_root, out_dir=work / name)
    wall = time.perf_counter() - t0
    torch.set_num_threads(cfg.torch_threads or torch.get_num_threads())
    ceiling = max(ceiling_before, fwd_bwd_ceiling(cfg, cfg.batch_size))
    m = res.metrics
    classes = res.spec.classes
    per_class = {c: {k: m[f"test_{k}_{c.replace('+', 'plus')}"] for k in ("precision", "recall", "f1", "support")}
                 for c in classes}
    out = {"case": name, "task": task, "preset": preset, "overrides": overrides, "arch": cfg.arch,
           "chirality_equivariant": cfg.chirality_equivariant, "image_size": cfg.image_size,
           "epochs": m["epochs"], "test_accuracy": m["test_accuracy"], "test_f1_macro": m["test_f1_macro"],
           "test_n": m["test_n"], "per_class": per_class, "train_images_per_s": m.get("train_images_per_s"),
           "fwd_bwd_ceiling_images_per_s": ceiling,
           "load_avg_after": os.getloadavg()[0], "wall_s": wall, "run_id": res.run_id}
    log.info("%s: %s", name, {k: out[k] for k in ("test_accuracy", "test_f1_macro", "train_images_per_s",
                                                    "fwd_bwd_ceiling_images_per_s", "wall_s")})
    return out


def write_markdown(results: list[dict], meta: dict, path: Path) -> None:
    lines = ["# Training benchmark (real data, reduced setting, CPU)", "",
             f"Measured {meta['date']} on {meta['machine']} ({meta['threads']} torch threads, machine shared "
             f"with other jobs: load average at start {meta['load_start']}). Script: `benchmarks/bench_train.py`.",
             "", ("Quiet run (load average < 0.5 at the start)." if meta.get("quiet") else
                  "**UNDER LOAD -- not a result** (load average >= 0.5 at the start)."),
             "", "**Reduced setting (honest note):** " + meta["note"], "",
             "| case | arch | px | epochs | test n | accuracy | macro F1 | train img/s | fwd+bwd ceiling img/s | "
             "ratio | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['arch']}{' + CE' if r['chirality_equivariant'] else ''} | {r['image_size']} | "
                     f"{int(r['epochs'])} | {int(r['test_n'])} | {r['test_accuracy']:.3f} | {r['test_f1_macro']:.3f} | "
                     f"{r['train_images_per_s']:.1f} | {r['fwd_bwd_ceiling_images_per_s']:.1f} | "
                     f"**{r['train_images_per_s'] / r['fwd_bwd_ceiling_images_per_s']:.2f}** | {r['wall_s']:.0f} |")
    lines += ["", "Per-class held-out precision / recall / F1 (support):", ""]
    for r in results:
        lines += [f"**{r['case']}** — published: {PUBLISHED[r['task']]}", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c, v in r["per_class"].items():
            lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {int(v['support'])} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=150, help="chirality images per class (balanced subset)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--arms-epochs", type=int, default=15)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)")
    ap.add_argument("--cases", default="chirality_resnet18,chirality_ce_resnet18,arms_b0_frozen")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "mlflow", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from galmorph.stack import start_service, stop_service

    data_root = get_settings().require_data_root()
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="galmorph-bench-train-"))
    st = Settings(state_dir=work / "state", mlflow_port=_free_port())
    start_service(st, "mlflow")
    try:
        chir = chirality_manifest(data_root, args.per_class, 0, work / "chirality.parquet")
        arms = arms_manifest(data_root, work / "arms.parquet")
        common = {"image_size": args.size, "max_epochs": args.epochs, "patience": 4, "trials": 1,
                  "batch_size": 32, "cache_images": True, "progress": False, "val_fraction": 0.15,
                  "torch_threads": args.threads,
                  "test_fraction": 0.2}
        cases = {
            "chirality_resnet18": ("chirality", "resnet18", {**common, "lr": 1e-3}, chir),
            "chirality_ce_resnet18": ("chirality", "ce_resnet18", {**common, "lr": 1e-3}, chir),
            "arms_b0_frozen": ("arms", "b0_frozen", {**common, "max_epochs": args.arms_epochs, "patience": 8,
                                                     "include_cant_tell": False, "max_per_class": 300,
                                                     "image_size": max(args.size, 96), "lr": 1e-3,
                                                     "batch_size": 16}, arms),
        }
        results = []
        for name in args.cases.split(","):
            task, preset, ov, man = cases[name]
            results.append(run_case(name, task, preset, ov, man, st.mlflow_tracking_uri, data_root, work))
    finally:
        stop_service(st, "mlflow")
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU", "threads": torch.get_num_threads(),
            "load_start": round(load_start, 2), "quiet": load_start < 0.5,
            "note": (f"chirality on a class-balanced subset of gz1_chirality ({args.per_class} per class of "
                     f"CW/ACW/other, stratified 65/15/20 split), {args.size} px instead of 224 px, at most "
                     f"{args.epochs} epochs, ResNet18 instead of ResNet50, random initialisation; arms on the 167 "
                     "gz2_arms images (classes 1-5+ from the rounded volunteer mean, <=300 per class, cant_tell "
                     "excluded) at 96 px from the 224/424 centre crop with a RANDOMLY initialised frozen "
                     "EfficientNet-B0 (no ImageNet weights can be downloaded here), so only the dense head learns: "
                     "the published F1 >= 0.8 needs the pretrained encoder, full resolution and the full sample. "
                     "Throughput is measured on a CPU shared with other jobs (training img/s = images over the summed "
                     "wall time of the training batches, data loading and augmentation included; ceiling = fastest "
                     "forward+backward+step of the same network/size/batch on in-memory tensors, before and after "
                     "training).")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=float))
    write_markdown(results, meta, RESULTS / "train.md")
    print((RESULTS / "train.md").read_text())


if __name__ == "__main__":
    main()
