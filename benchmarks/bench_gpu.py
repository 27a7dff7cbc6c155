"""One GPU (#28): training img/s of the chirality ``reference`` preset and ``galmorph score`` img/s, each
against the same-run ceiling of the same network on the same card. Writes benchmarks/results/gpu.{json,md}.

The prepared script for a lent GPU machine (``make bench-gpu``): it refuses to run without CUDA, except
with ``--quick``, which checks the script on the CPU (written to ``results/quick/``, not a result).

* training: ``galmorph train --task chirality --preset reference --accelerator gpu --json`` (the user's
  command, the preset's own precision and loader settings) on a class-balanced subset of the public GZ1
  images; img/s from the second epoch, read back from its MLflow run. Ceiling: forward + backward + the
  module's own optimiser step on in-memory tensors on the card, same batch and size, under the preset's
  precision (autocast for ``*-mixed``), before and after the run (the larger is used).
* scoring: ``galmorph score --device cuda`` with its defaults on a release of ``--score-rows`` GZ1 rows
  (the trained model; wall time of the command, start-up included, and the rate it reports). Ceiling: the
  loaded model's eager fp32 forward on in-memory tensors on the card, batch 64.

    uv run python benchmarks/bench_gpu.py [--per-class 300] [--epochs 3] [--score-rows 8000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from _common import machine, quiet_line, training_logging  # noqa: E402
from bench_train import balanced_gz1  # noqa: E402

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or HERE / "results")
GALMORPH = Path(sys.executable).with_name("galmorph")


def _timed(step, seconds: float, batch: int) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    step()
    step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    sync()
    return batch * n / (time.perf_counter() - t0)


def train_ceiling(cfg, device: str, seconds: float) -> float:
    """Forward + backward + optimiser step of the preset's module on in-memory tensors on ``device``."""
    import torch

    from galmorph.models.classifier import GalaxyClassifier

    module = GalaxyClassifier(cfg.network_params(())).to(device).train()
    opt = module.configure_optimizers()
    opt = opt[0][0] if isinstance(opt, tuple) else opt["optimizer"] if isinstance(opt, dict) else opt
    x = torch.rand(cfg.batch_size, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, len(cfg.classes()), (cfg.batch_size,), device=device)
    mixed = str(cfg.precision).endswith("-mixed") and device != "cpu"
    dtype = torch.bfloat16 if str(cfg.precision).startswith("bf16") else torch.float16

    def step():
        opt.zero_grad()
        with torch.autocast(device_type="cuda", dtype=dtype, enabled=mixed):
            loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        opt.step()

    return _timed(step, seconds, cfg.batch_size)


def forward_ceiling(module, image_size: int, in_chans: int, device: str, seconds: float, batch: int = 64) -> float:
    import torch

    x = torch.rand(batch, in_chans, image_size, image_size, device=device)
    module = module.to(device)

    def step():
        with torch.inference_mode():
            module(x)

    return _timed(step, seconds, batch)


def run(cmd: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    try:
        return json.loads(proc.stdout), wall
    except json.JSONDecodeError:
        return {}, wall


def main() -> None:  # noqa: PLR0915 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--score-rows", type=int, default=8000)
    ap.add_argument("--quick", action="store_true", help="CPU smoke check of the script (not a result)")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.quick:
        raise SystemExit("bench_gpu: no CUDA device here; run it on a GPU machine (or --quick to check the script)")
    if a.quick:
        a.per_class, a.epochs, a.score_rows = 12, 2, 256
    device, accel = ("cuda", "gpu") if cuda else ("cpu", "cpu")
    training_logging()
    m = machine()
    m["card"] = torch.cuda.get_device_name(0) if cuda else None
    print(quiet_line(m), m["card"], flush=True)

    import pandas as pd
    from mlflow import MlflowClient

    from galmorph.models.io import load_for_inference
    from galmorph.settings import get_settings
    from galmorph.tracking import using_tracking_uri
    from galmorph.training import resolve_config

    data_root = get_settings().require_data_root()
    work = Path(tempfile.mkdtemp(prefix="galmorph-bench-gpu-"))
    manifest = balanced_gz1(data_root, a.per_class, work / "gz1.parquet")
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    sets = {"max_epochs": a.epochs, "min_epochs": a.epochs, "patience": a.epochs, "progress": False, "trials": 1}
    cfg = resolve_config("chirality", "reference", {**sets, "accelerator": accel})
    secs = 2.0 if a.quick else 10.0
    t_ceiling = [train_ceiling(cfg, device, secs)]
    out, t_wall = run([str(GALMORPH), "train", "--task", "chirality", "--preset", "reference", "--manifest",
                       str(manifest), "--accelerator", accel, "--tracking-uri", tracking, "--out-dir", str(work / "t"),
                       "--json", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]])
    t_ceiling.append(train_ceiling(cfg, device, secs))
    metrics = MlflowClient(tracking_uri=tracking).get_run(out["run_id"]).data.metrics
    train_rate = metrics.get("train_images_per_s_after_first_epoch")

    pool = pd.read_parquet(manifest)
    release = pd.concat([pool] * (a.score_rows // len(pool) + 1), ignore_index=True).head(a.score_rows)
    release["object_id"] = [f"r{i}" for i in range(len(release))]
    release.to_parquet(work / "release.parquet")
    with using_tracking_uri(tracking):
        lm = load_for_inference(out["model_uri"])
    s_ceiling = [forward_ceiling(lm.module, lm.spec.image_size, lm.spec.in_chans, device, secs)]
    summary, s_wall = run([str(GALMORPH), "score", "--model", out["model_uri"], "--manifest",
                           str(work / "release.parquet"), "--out", str(work / "scores"), "--device", device,
                           "--tracking-uri", tracking, "--no-log-mlflow", "--release", "bench-gpu"])
    s_ceiling.append(forward_ceiling(lm.module, lm.spec.image_size, lm.spec.in_chans, device, secs))
    res = {"machine": m, "quick": a.quick, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
           "train": {"preset": "chirality reference", "arch": cfg.arch, "image_size": cfg.image_size,
                     "batch_size": cfg.batch_size, "precision": str(cfg.precision), "images": len(pool),
                     "epochs": a.epochs, "wall_s": round(t_wall, 1), "images_per_s_after_first_epoch": train_rate,
                     "ceiling_before": round(t_ceiling[0], 1), "ceiling_after": round(t_ceiling[1], 1),
                     "ratio": (train_rate / max(t_ceiling)) if train_rate else None},
           "score": {"rows": len(release), "wall_s": round(s_wall, 1), "images_per_s_wall": len(release) / s_wall,
                     "reported": {k: summary.get(k) for k in ("images_per_s", "seconds", "precision", "decode")
                                  if isinstance(summary, dict)},
                     "ceiling_before": round(s_ceiling[0], 1), "ceiling_after": round(s_ceiling[1], 1),
                     "ratio_wall": len(release) / s_wall / max(s_ceiling)}}
    write(res, OUT / ("quick" if a.quick else ""))


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=2, default=float))
    m, t, s = res["machine"], res["train"], res["score"]
    ratio = f"{t['ratio']:.2f}×" if t["ratio"] else "n/a"
    lines = ["# One GPU: training and scoring against the same-run ceiling (#28)", "",
             f"{quiet_line(m)}; card: {m['card'] or 'none (CPU smoke check)'}, torch {m.get('torch')}, {m['date']}. "
             f"Load average at the end: {res['load_avg_at_end']}.", "",
             "| what | img/s | ceiling img/s (before / after) | ratio | wall s |", "|---|---|---|---|---|",
             f"| `galmorph train` chirality reference ({t['arch']}, {t['image_size']} px, batch {t['batch_size']}, "
             f"{t['precision']}), epochs 2..{t['epochs']} | {t['images_per_s_after_first_epoch'] or float('nan'):.1f} | "
             f"{t['ceiling_before']} / {t['ceiling_after']} | {ratio} | {t['wall_s']} |",
             f"| `galmorph score` defaults, {s['rows']} rows, start-up included | {s['images_per_s_wall']:.1f} | "
             f"{s['ceiling_before']} / {s['ceiling_after']} (eager fp32 forward) | {s['ratio_wall']:.2f}× | "
             f"{s['wall_s']} |", ""]
    (out / "gpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
