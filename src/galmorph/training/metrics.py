"""Held-out evaluation of a trained network: predictions, per-class precision/recall/F1, confusion
matrix, and the plots logged with every run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader


@torch.inference_mode()
def predict_loader(net: torch.nn.Module, loader: DataLoader, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N,K), labels (N,))`` of ``net`` (eval mode) over ``loader``."""
    net = net.eval().to(device)
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(net(x.to(device)).float(), dim=1).cpu().numpy())
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=int)
    return np.concatenate(probs), np.concatenate(labels)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str],
                           prefix: str = "test_") -> tuple[dict[str, float], dict]:
    """Flat metrics (accuracy, macro F1, per-class precision/recall/F1/support) and a report dict with
    the confusion matrix (rows = true class, columns = predicted) of class indices ``y_true``/``y_pred``.

    An adapter of :func:`galmorph.evaluation.metrics.label_metrics`, the project's one implementation
    (macro F1 over the classes with support, :func:`galmorph.evaluation.metrics.macro_f1`; the others
    listed in the report's ``absent_classes``); metric names are ``prefix`` +
    :func:`galmorph.evaluation.metrics.metric_key` (``test_precision_5plus``)."""
    from galmorph.evaluation.metrics import label_metrics, metric_key

    core = label_metrics(np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), classes)
    m: dict[str, float] = {f"{prefix}accuracy": core["accuracy"], f"{prefix}f1_macro": core["macro"]["f1"],
                           f"{prefix}n": float(core["n"])}
    per_class = {c: dict(core["per_class"][str(c)]) for c in classes}
    for c, d in per_class.items():
        for name in ("precision", "recall", "f1", "support"):
            m[prefix + metric_key(name, c)] = float(d[name])
    report = {"classes": list(classes), "confusion_matrix": core["confusion"], "per_class": per_class,
              "accuracy": m[f"{prefix}accuracy"], "f1_macro": m[f"{prefix}f1_macro"],
              "absent_classes": core["absent_classes"]}
    return m, report


def plot_confusion(report: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"])
    classes = report["classes"]
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(history: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, what in zip(axes, ("loss", "acc")):
        for stage in ("train", "val"):
            col = f"{stage}_{what}"
            if col in history.columns and history[col].notna().any():
                ax.plot(history["epoch"], history[col], marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
