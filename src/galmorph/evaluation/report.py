"""The evaluation report: matplotlib figures embedded as base64 PNG plus tables, in one HTML file rendered
from the jinja2 templates in ``galmorph/evaluation/templates/`` (package data)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.evaluation.templating import template_env  # noqa: F401 - re-exported


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def fig_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def plot_confusion(cm: Sequence[Sequence[float]], classes: Sequence[str], title: str, fmt: str = "d") -> str:
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(cm, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    mx = cm.max() if cm.size else 1
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            txt = f"{int(cm[i, j])}" if fmt == "d" else f"{cm[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center", color="white" if cm[i, j] > mx / 2 else "black", fontsize=8)
    return fig_to_base64(fig)


def plot_roc(roc: Mapping[str, Mapping], aucs: Mapping[str, float], title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for c, d in roc.items():
        ax.plot(d["fpr"], d["tpr"], label=f"{c} (AUC {aucs.get(c, float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return fig_to_base64(fig)


def plot_zbin_auc(zbins: Mapping[str, Mapping]) -> str:
    plt = _plt()
    names = list(zbins)
    auc = [zbins[b].get("auc_macro", float("nan")) for b in names]
    acc = [zbins[b].get("accuracy", float("nan")) for b in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(names)), 3.2))
    ax.bar(x - 0.2, auc, 0.4, label="macro AUC")
    ax.bar(x + 0.2, acc, 0.4, label="accuracy")
    for i, b in enumerate(names):
        ax.text(i, 0.02, f"n={zbins[b]['n']}", ha="center", fontsize=7, rotation=90, color="black")
    ax.set_xticks(x, names, rotation=45)
    ax.set_ylim(0, 1.05)
    ax.set_title("per redshift bin")
    ax.legend(fontsize=7)
    return fig_to_base64(fig)


def plot_sweep(sweep: Mapping) -> str:
    plt = _plt()
    pts = pd.DataFrame(sweep["points"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(pts["set_cvs"], pts["pred_cvs"], s=8, alpha=0.6)
    xs = np.linspace(pts["set_cvs"].min(), pts["set_cvs"].max(), 10)
    ax.plot(xs, sweep["slope"] * xs + sweep["intercept"], "r-",
            label=f"fit: slope {sweep['slope']:.3f}, intercept {sweep['intercept']:.3f}")
    ax.plot(xs, xs, "k:", lw=0.8, label="ideal")
    ax.set_xlabel("set CVS")
    ax.set_ylabel("predicted CVS")
    ax.set_title(f"CVS sweep (N={sweep['n']})")
    ax.legend(fontsize=7)
    return fig_to_base64(fig)


def plot_reliability(rel: Mapping, title: str = "reliability diagram") -> str:
    plt = _plt()
    edges = np.asarray(rel["edges"], float)
    mids = (edges[1:] + edges[:-1]) / 2
    acc = np.asarray(rel["accuracy"], float)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(mids, np.nan_to_num(acc), width=np.diff(edges), edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    conf = np.asarray(rel["confidence"], float)
    ax.plot(conf, acc, "ro", ms=3, label="mean confidence")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {rel['ece']:.3f})")
    ax.legend(fontsize=7, loc="upper left")
    return fig_to_base64(fig)


def explanation_columns(maps: Mapping) -> list[str]:
    """Map names shown in the panel: combined Grad-CAM / Grad-CAM++, per-view maps, SmoothGrad."""
    keys = [k for k in ("gradcam", "gradcampp") if k in maps]
    keys += sorted(k for k in maps if isinstance(k, str) and "[" in k and isinstance(maps[k], np.ndarray))
    return keys + (["smoothgrad"] if "smoothgrad" in maps else [])


def plot_explanations(images: np.ndarray, maps: Mapping[str, np.ndarray], examples: pd.DataFrame,
                      rows: Sequence[int] | None = None) -> str:
    """One row per example (``rows``: positions in ``examples``/``images``; default all): the image and
    each explanation map over it."""
    plt = _plt()
    kinds = explanation_columns(maps)
    rows = list(range(len(examples))) if rows is None else list(rows)
    n = len(rows)
    fig, axes = plt.subplots(n, 1 + len(kinds), figsize=(1.8 * (1 + len(kinds)), 1.9 * n), squeeze=False)
    for i, pos in enumerate(rows):
        r = examples.iloc[pos]
        img = images[pos]
        img = img.transpose(1, 2, 0) if img.shape[0] in (1, 3) else img
        img = img[..., 0] if img.shape[-1] == 1 else img
        axes[i, 0].imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None)
        axes[i, 0].set_title(f"{r['kind']}: {r['true_class']}->{r['pred']} ({r['p_pred']:.2f})", fontsize=6)
        for j, k in enumerate(kinds):
            axes[i, j + 1].imshow(np.clip(img, 0, 1).mean(axis=-1) if img.ndim == 3 else img, cmap="gray")
            axes[i, j + 1].imshow(maps[k][pos], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j + 1].set_title(k, fontsize=6)
        for a in axes[i]:
            a.axis("off")
    return fig_to_base64(fig)


# --------------------------------------------------------------------------------------------
# HTML (jinja2 templates)
# --------------------------------------------------------------------------------------------
def _b64(b64: str, alt: str) -> dict:
    return {"b64": b64, "alt": alt}


def build_report_html(report: Mapping, explanations: Mapping | None = None) -> str:
    """The HTML report of one evaluation (see :func:`galmorph.evaluation.core.evaluate`)."""
    cls = report["classification"]
    classes = list(cls["per_class"])
    ctx: dict = {"meta": {k: str(v) for k, v in report.get("meta", {}).items()}}
    ctx["title"] = f"galmorph evaluation: {ctx['meta'].get('model_uri', '')}"
    ctx["generated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = cls.get("majority_baseline") or {}
    ctx["summary"] = {"all": {"n": cls["n"], "accuracy": cls["accuracy"],
                              **{f"{k}_macro": v for k, v in cls["macro"].items()}},
                      **({f"majority class ({base['class']})": {"n": cls["n"], "accuracy": base["accuracy"],
                                                                "f1_macro": base["f1_macro"]}} if base else {})}
    ctx["counts"] = report.get("counts") or {}
    ctx["absent_classes"] = cls.get("absent_classes", [])
    ctx["per_class"] = cls["per_class"]
    ctx["figs"] = [_b64(plot_confusion(cls["confusion"], classes, "confusion (counts)"), "confusion counts"),
                   _b64(plot_confusion(cls["confusion_normalised"], classes, "confusion (normalised)", fmt=".2f"),
                        "confusion normalised"),
                   _b64(plot_roc(cls.get("roc", {}), {c: cls["per_class"][c]["auc"] for c in classes},
                                 "ROC (one-vs-rest)"), "roc")]
    zb = report.get("redshift_bins", {})
    ctx["zbins"] = zb
    if zb:
        ctx["zfigs"] = [_b64(plot_zbin_auc(zb), "zbins")] + [
            _b64(plot_roc(d["roc"], d.get("auc", {}), f"ROC z {b} (n={d['n']})"), f"roc {b}")
            for b, d in zb.items() if d.get("roc")]
    cal = report.get("calibration")
    ctx["calibration"] = cal
    if cal and cal.get("overall", {}).get("n"):
        ctx["calibration_figs"] = [_b64(plot_reliability(cal["overall"]), "reliability diagram")] + [
            _b64(plot_reliability(r, f"reliability z {b} (n={r['n']})"), f"reliability diagram z {b}")
            for b, r in (cal.get("redshift_bins") or {}).items() if r.get("n") and "edges" in r]
    ctx["thresholds"] = report.get("thresholds", {})
    ch = report.get("chirality")
    if ch:
        parts = []
        if "cvs" in ch:
            parts.append({"heading": "", "rows": {"CVS": ch["cvs"]}, "first": ""})
        if "mirror" in ch:
            parts.append({"heading": "Mirror test", "rows": {"mirror": ch["mirror"]}, "first": ""})
        if "sweep" in ch:
            parts.append({"heading": "Sweep test", "rows": {"sweep": ch["sweep"]}, "first": "",
                          "fig": plot_sweep(ch["sweep"])})
        if "rotation" in ch:
            rot = ch["rotation"]
            parts.append({"heading": "Rotation stability (MC dropout)", "first": "",
                          "rows": {"rotation": {k: rot[k] for k in ("eta_mean", "mc_dropout", "n_passes",
                                                                    "n_rotations", "n_galaxies") if k in rot}}})
            parts.append({"heading": "", "rows": rot["eta"], "first": "class pair"})
        if "mc_dropout" in ch:
            parts.append({"heading": "MC-dropout predictive spread", "first": "",
                          "rows": {"MC dropout": ch["mc_dropout"]}})
        if ch.get("skipped"):
            parts.append({"heading": "Skipped", "rows": {k: {"reason": v} for k, v in ch["skipped"].items()},
                          "first": "test"})
        ctx["chirality"] = parts
    if explanations:
        ex = explanations["examples"]
        maps = explanations["maps"]
        panels = []
        for c in dict.fromkeys(ex["true_class"].astype(str)):
            rows = np.flatnonzero(ex["true_class"].astype(str).to_numpy() == c)
            panels.append({"cls": c, "b64": plot_explanations(explanations["images"], maps, ex, rows)})
        ctx["explanations"] = {"target_layer": maps.get("target_layer"), "views": maps.get("views", []),
                               "columns": [c for c in ex.columns if c != "row"],
                               "rows": ex.drop(columns=["row"]).to_dict(orient="records"), "panels": panels}
    elif report.get("explanations", {}).get("skipped"):
        ctx["explanations_skipped"] = report["explanations"]["skipped"]
    if "trials" in report:
        ctx["trials"] = report["trials"]
    card = report.get("model_card")
    if card:
        ctx["card"] = card
        from galmorph.evaluation.card import card_markdown

        ctx["card_md"] = card_markdown(card)  # shown as preformatted text by the template (escaped there)
    return template_env().get_template("report.html.j2").render(**ctx)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
