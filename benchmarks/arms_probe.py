"""Arms: how much arm-number information do the pretrained encoder's features carry on gz2_arms?

The #12 goal asks the arms ``reference`` preset to beat the same preset from random weights by 0.10
macro-F1. On the 166 labelled gz2_arms galaxies the fine-tuned networks reach 0.177 vs 0.128
(``results/reference*.md``). This analysis separates the encoder from the fine-tuning: a linear probe
(standardised features, logistic regression, balanced class weights) on the *frozen* features of
EfficientNet-Lite0 with its packaged ImageNet weights and of the same encoder from random weights.
Features are the mean over the 8 rotation/mirror views (arm number is invariant to both) at the arms
reference framing (160 px, crop 0.70). The probe's C is chosen on 10 tuning splits (seeds 2000-2009)
and reported on the benchmark's 5 splits (seeds 1000-1004, ``reference.split_frame``), by the project's
one macro-F1 definition (mean over the classes with support in the test split).

Also reported: the class counts, and the highest macro-F1 any classifier can reach when the classes
that have no training example (or one) score 0 -- the ceiling the sample itself puts on the goal.

``make bench-arms_probe`` (``uv run python benchmarks/arms_probe.py``) -> results/arms_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TUNING_SEEDS, BENCH_SEEDS = range(2000, 2010), range(1000, 1005)
CS = (0.01, 0.1, 1.0)
INITS = {"pretrained": "package:efficientnet-lite0", "random": "none"}


def frozen_features(df, data_root: Path, weights: str, image_size: int, crop: float, classes) -> np.ndarray:
    """Mean encoder features over the 8 rotation x mirror views, ``(n, 1280)``."""
    import torch

    from galmorph.datasets.images import ManifestImageDataset
    from galmorph.models.networks import build_network
    from galmorph.models.params import NetworkParams

    torch.manual_seed(0)  # the random-weights encoder is seeded
    net, _tags = build_network(NetworkParams(task="arms", classes=tuple(classes), arch="efficientnet_lite0",
                                             encoder_weights=weights))
    net.eval()
    ds = ManifestImageDataset(df, image_size, 3, crop, classes=list(classes), data_root=data_root)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    out = np.zeros((len(x), net.encoder.num_features))
    with torch.no_grad():
        for k in range(4):
            for mirror in (False, True):
                v = torch.rot90(x, k, dims=[2, 3])
                v = torch.flip(v, dims=[3]) if mirror else v
                out += torch.cat([net.encoder(net.normalize(v[i:i + 32])) for i in range(0, len(v), 32)]).numpy()
    return out / 8


def probe_scores(F: np.ndarray, df, seeds, C: float, classes) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from reference import macro_f1, split_frame

    d = df[["label"]].astype(str).assign(i=np.arange(len(df)))
    scores = []
    for s in seeds:
        tr, te = split_frame(d, seed=s)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000))
        clf.fit(F[tr["i"].to_numpy()], tr["label"].to_numpy())
        scores.append(macro_f1(te["label"].to_numpy(), clf.predict(F[te["i"].to_numpy()]), classes)[0])
    return scores


def ceiling(df, seeds, classes) -> list[float]:
    """Macro-F1 of a classifier that is perfect on every class with >= 2 training examples and scores 0
    on the classes with support in the test split but fewer than 2 in the training part."""
    from reference import split_frame

    out = []
    for s in seeds:
        tr, te = split_frame(df[["label"]].astype(str), seed=s)
        ntr, nte = tr["label"].value_counts(), te["label"].value_counts()
        present = [c for c in classes if nte.get(c, 0) > 0]
        out.append(sum(1.0 for c in present if ntr.get(c, 0) >= 2) / len(present))
    return out


def main(argv=None) -> int:
    from _common import machine

    from reference import load_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    from galmorph.settings import resolve_settings
    from galmorph.training import resolve_config

    data_root = args.data_root or resolve_settings().data_root
    if data_root is None or not Path(data_root).is_dir():
        print(f"arms probe: the shared data is missing ({data_root}); set GALMORPH_DATA_ROOT", file=sys.stderr)
        return 2
    data_root = Path(data_root)
    m = machine()
    t0 = time.perf_counter()
    cfg = resolve_config("arms", "reference", {})
    classes = list(cfg.classes())
    size, crop = cfg.image_size, cfg.crop_fraction
    df = load_task("arms", data_root)
    result: dict = {"machine": m, "n": len(df), "class_counts": df["label"].astype(str).value_counts().to_dict(),
                    "image_size": size, "crop_fraction": crop, "Cs": list(CS), "probes": {}}
    for init, weights in INITS.items():
        F = frozen_features(df, data_root, weights, size, crop, classes)
        tune = {C: float(np.mean(probe_scores(F, df, TUNING_SEEDS, C, classes))) for C in CS}
        best = max(tune, key=tune.get)
        bench = probe_scores(F, df, BENCH_SEEDS, best, classes)
        result["probes"][init] = {"tuning_macro_f1": {str(k): v for k, v in tune.items()}, "C": best,
                                  "macro_f1": bench, "mean": float(np.mean(bench)), "std": float(np.std(bench))}
        print(f"{init}: C {best} (tuning {tune[best]:.3f}); benchmark splits {np.mean(bench):.3f} ± "
              f"{np.std(bench):.3f}", flush=True)
    ce = ceiling(df, BENCH_SEEDS, classes)
    result["ceiling_macro_f1"] = {"per_split": ce, "mean": float(np.mean(ce))}
    result["minutes"] = (time.perf_counter() - t0) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arms_probe.json").write_text(json.dumps(result, indent=2, default=str))
    p, r = result["probes"]["pretrained"], result["probes"]["random"]
    counts = ", ".join(f"{c}: {result['class_counts'].get(c, 0)}" for c in classes)
    md = ["# Arms: linear probe on frozen encoder features, pretrained vs random weights", "",
          f"{m['cpus']} CPUs, {m['date']}; {result['minutes']:.1f} min, load average {m['load_avg_at_start'][0]:.2f} "
          f"at the start (a seeded computation: the load changes only the minutes).", "",
          f"{result['n']} labelled gz2_arms galaxies ({counts}), {size} px, crop {crop}, features = mean "
          f"over 8 rotation x mirror views; logistic regression (standardised, balanced class weights), C chosen "
          f"on 10 tuning splits, reported on the benchmark's 5 splits (mean ± σ), macro-F1 over the classes with "
          f"support in the test split.", "",
          "| encoder (frozen) | C | tuning splits | benchmark splits |", "|---|---|---|---|",
          f"| EfficientNet-Lite0, packaged ImageNet weights | {p['C']} | {p['tuning_macro_f1'][str(p['C'])]:.3f} | "
          f"{p['mean']:.3f} ± {p['std']:.3f} |",
          f"| EfficientNet-Lite0, random weights | {r['C']} | {r['tuning_macro_f1'][str(r['C'])]:.3f} | "
          f"{r['mean']:.3f} ± {r['std']:.3f} |", "",
          f"Difference on the benchmark splits: {p['mean'] - r['mean']:+.3f}. Ceiling set by the sample: "
          f"{result['ceiling_macro_f1']['mean']:.2f} (a classifier perfect on every class with ≥ 2 training "
          f"examples; the classes with support in a test quarter but fewer in its training part score 0)."]
    (args.out / "arms_probe.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
