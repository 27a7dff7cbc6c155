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
    the confusion matrix (rows = true class, columns = predicted). Macro F1 is the project's one
    definition, :func:`galmorph.evaluation.metrics.macro_f1` (classes with support; the others listed in
    the report's ``absent_classes``)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from galmorph.evaluation.metrics import macro_f1

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    names = np.asarray([str(c) for c in classes], dtype=object)
    f1_macro, absent = macro_f1(names[y_true].tolist(), names[y_pred].tolist(), classes)
    m: dict[str, float] = {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        f"{prefix}f1_macro": f1_macro,
        f"{prefix}n": float(len(y_true)),
    }
    for i, c in enumerate(classes):
        key = safe_metric_name(c)
        m[f"{prefix}precision_{key}"] = float(p[i])
        m[f"{prefix}recall_{key}"] = float(r[i])
        m[f"{prefix}f1_{key}"] = float(f[i])
        m[f"{prefix}support_{key}"] = float(s[i])
    report = {"classes": list(classes), "confusion_matrix": cm.tolist(),
              "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                "support": int(s[i])} for i, c in enumerate(classes)},
              "accuracy": m[f"{prefix}accuracy"], "f1_macro": m[f"{prefix}f1_macro"], "absent_classes": absent}
    return m, report


def safe_metric_name(c: str) -> str:
    """MLflow-safe class name for metric keys (``5+`` -> ``5plus``)."""
    return str(c).replace("+", "plus").replace(" ", "_")


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
