"""Training loop at the ceiling (#14.3): images/s of real training against the forward+backward ceiling of
the same network measured in the same run. Writes benchmarks/results/train.{json,md}.

The chirality ``reference`` preset (packaged EfficientNet-Lite0, 128 px, batch 32, rotation + zoom +
mirror swap, balanced class weights, decoded-image cache) trains through
:func:`galmorph.training.train` (a private local MLflow store, nothing registered) on a class-balanced
subset of the public GZ1 images, once per DataLoader setting in ``--workers`` (``0``: augmentation in the
training process; ``1``: one worker process, the setting ``num_workers=-1`` picks on this 2-core machine).

* training img/s: images over the wall time of each epoch's training part (data loading, augmentation,
  forward, backward and the optimiser step; validation excluded), epoch 1 (the cache is built before it)
  and epochs 2..N (``train_images_per_s_after_first_epoch``);
* ceiling: forward + backward + the module's own optimiser step on in-memory tensors of the same batch
  and size, train mode, same threads; the larger of the measurements before and after the cases.

    uv run python benchmarks/bench_train.py [--per-class 200] [--epochs 4] [--workers 0,1] [--quick]
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
log = logging.getLogger("bench_train")


def train_ceiling(cfg, seconds: float = 8.0) -> float:
    """Forward + backward + optimiser step of the preset's module on random in-memory tensors (img/s)."""
    import torch

    from galmorph.models.classifier import GalaxyClassifier

    module = GalaxyClassifier(cfg.network_params(()))
    module.train()
    opt = module.configure_optimizers()
    x = torch.rand(cfg.batch_size, cfg.in_chans, cfg.image_size, cfg.image_size)
    y = torch.randint(0, len(cfg.classes()), (cfg.batch_size,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt.step()

    step()
    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    return cfg.batch_size * n / (time.perf_counter() - t0)


def balanced_gz1(data_root: Path, per_class: int, out: Path) -> Path:
    from galmorph.catalogue.ingest import ingest_gz1_chirality
    from galmorph.catalogue.manifest import write_manifest

    man, _ = ingest_gz1_chirality(data_root / "gz1_chirality" / "labels.csv", data_root / "gz1_chirality" / "images",
                                  data_root=data_root)
    sub = (man.groupby("label", group_keys=False)
           .apply(lambda g: g.sample(min(per_class, len(g)), random_state=0)).reset_index(drop=True))
    return write_manifest(sub, out, kind="bench-train-gz1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", default="0,1", help="DataLoader worker settings to compare")
    ap.add_argument("--quick", action="store_true", help="tiny run that checks the script (not a result)")
    a = ap.parse_args()
    if a.quick:
        a.per_class, a.epochs = 20, 2
    training_logging()
    m = machine()
    print(quiet_line(m), flush=True)

    from galmorph.settings import get_settings
    from galmorph.training import resolve_config, train

    data_root = get_settings().require_data_root()
    work = Path(tempfile.mkdtemp(prefix="galmorph-bench-train-"))
    manifest = balanced_gz1(data_root, a.per_class, work / "gz1.parquet")
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    base = {"max_epochs": a.epochs, "min_epochs": a.epochs, "patience": a.epochs, "progress": False,
            "trials": 1, "val_fraction": 0.1, "test_fraction": 0.1}
    cfg0 = resolve_config("chirality", "reference", base)
    ceilings = [train_ceiling(cfg0, 3.0 if a.quick else 8.0)]
    log.info("ceiling before: %.1f img/s", ceilings[0])
    cases = []
    for w in [int(x) for x in a.workers.split(",")]:
        t0 = time.perf_counter()
        res = train("chirality", "reference", {**base, "num_workers": w}, manifest=manifest, tracking_uri=tracking,
                    experiment="bench-train", register=False, data_root=data_root, out_dir=work / f"w{w}")
        wall = time.perf_counter() - t0
        cases.append({"num_workers": w, "epochs": int(res.metrics["epochs"]),
                      "train_images_per_s": res.metrics.get("train_images_per_s"),
                      "first_epoch": res.metrics.get("train_images_per_s_first_epoch"),
                      "after_first_epoch": res.metrics.get("train_images_per_s_after_first_epoch"),
                      "wall_s": round(wall, 1), "test_accuracy": res.metrics.get("test_accuracy")})
        log.info("workers=%d: %s", w, cases[-1])
    ceilings.append(train_ceiling(cfg0, 3.0 if a.quick else 8.0))
    ceiling = max(ceilings)
    for c in cases:
        c["ratio_after_first_epoch"] = (c["after_first_epoch"] / ceiling) if c["after_first_epoch"] else None
    load_end = [round(x, 2) for x in os.getloadavg()]
    res = {"machine": m, "quick": a.quick, "load_avg_at_end": load_end, "per_class": a.per_class, "epochs": a.epochs,
           "preset": "chirality reference", "image_size": cfg0.image_size, "batch_size": cfg0.batch_size,
           "arch": cfg0.arch, "ceiling_images_per_s": {"before": round(ceilings[0], 1), "after": round(ceilings[1], 1),
                                                      "used": round(ceiling, 1)},
           "cases": cases, "goal": "training img/s from the second epoch >= 0.85 x the forward+backward ceiling"}
    out = OUT / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(res, indent=2, default=float))
    lines = ["# Training loop vs its ceiling (#14.3)", "",
             f"{quiet_line(m)}; {m['cpus']} CPUs, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
             f"{m['date']}. Load average at the end: {load_end}.", "",
             f"Chirality `reference` preset ({cfg0.arch}, {cfg0.image_size} px, batch {cfg0.batch_size}, packaged "
             f"ImageNet weights, rotation + zoom + mirror swap, decoded-image cache) on {a.per_class} GZ1 images "
             f"per class, {a.epochs} epochs. Ceiling: forward + backward + the module's AdamW step on in-memory "
             f"tensors, {ceilings[0]:.1f} img/s before the runs and {ceilings[1]:.1f} after (the larger is used).", "",
             "| DataLoader workers | epoch 1 img/s | epochs 2..N img/s | ceiling img/s | ratio (epochs 2..N) | wall s |",
             "|---|---|---|---|---|---|"]
    for c in cases:
        e1 = f"{c['first_epoch']:.1f}" if c["first_epoch"] else "n/a"
        later = f"{c['after_first_epoch']:.1f}" if c["after_first_epoch"] else "n/a"
        ratio = f"**{c['ratio_after_first_epoch']:.2f}×**" if c["ratio_after_first_epoch"] else "n/a"
        lines.append(f"| {c['num_workers']} | {e1} | {later} | {ceiling:.1f} | {ratio} | {c['wall_s']} |")
    lines += ["", "Training img/s: images over the wall time of each epoch's training part (data loading, "
              "augmentation, forward, backward, optimiser step; validation excluded)."]
    (out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
