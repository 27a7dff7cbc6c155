"""The evaluation report: matplotlib figures embedded as base64 PNG plus tables, in one HTML file."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd


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


def plot_explanations(images: np.ndarray, maps: Mapping[str, np.ndarray], examples: pd.DataFrame) -> str:
    plt = _plt()
    kinds = [k for k in ("gradcam", "gradcampp", "smoothgrad") if k in maps]
    n = len(examples)
    fig, axes = plt.subplots(n, 1 + len(kinds), figsize=(1.8 * (1 + len(kinds)), 1.9 * n), squeeze=False)
    for i, (_, r) in enumerate(examples.iterrows()):
        img = images[i]
        img = img.transpose(1, 2, 0) if img.shape[0] in (1, 3) else img
        img = img[..., 0] if img.shape[-1] == 1 else img
        axes[i, 0].imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None)
        axes[i, 0].set_title(f"{r['kind']}: {r['true_class']}->{r['pred']} ({r['p_pred']:.2f})", fontsize=6)
        for j, k in enumerate(kinds):
            axes[i, j + 1].imshow(np.clip(img, 0, 1).mean(axis=-1) if img.ndim == 3 else img, cmap="gray")
            axes[i, j + 1].imshow(maps[k][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j + 1].set_title(k, fontsize=6)
        for a in axes[i]:
            a.axis("off")
    return fig_to_base64(fig)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def dict_table(rows: Mapping[str, Mapping], first: str = "") -> str:
    cols: list[str] = []
    for r in rows.values():
        for c in r:
            if c not in cols and not isinstance(r[c], (dict, list)):
                cols.append(c)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first] + cols)
    body = "".join("<tr><th>" + html.escape(str(k)) + "</th>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols)
                   + "</tr>" for k, r in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(title: str, sections: Sequence[tuple[str, str]], meta: Mapping[str, str]) -> str:
    """A self-contained HTML page; ``sections`` are ``(heading, html body)``."""
    css = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:0.5em 0}"
           "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}th{background:#f4f4f4}"
           "img{max-width:100%;margin:4px}.figs{display:flex;flex-wrap:wrap;align-items:flex-start}")
    meta_rows = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                        for k, v in meta.items())
    body = "".join(f"<h2>{html.escape(h)}</h2>{b}" for h, b in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table>{meta_rows}</table>{body}"
            f"<p><small>generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by galmorph.evaluation"
            f"</small></p></body></html>")


def img_tag(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'/>"


def build_report_html(report: Mapping, explanations: Mapping | None = None) -> str:
    """The HTML report of one evaluation (see :func:`galmorph.evaluation.core.evaluate`)."""
    cls = report["classification"]
    classes = list(cls["per_class"])
    sections: list[tuple[str, str]] = []
    summary = {"all": {"n": cls["n"], "accuracy": cls["accuracy"], **{f"{k}_macro": v for k, v in cls["macro"].items()}}}
    counts = report.get("counts") or {}
    sections.append(("Summary", dict_table(summary) + (dict_table({"rows": counts}) if counts else "")))
    sections.append(("Per class", dict_table(cls["per_class"], "class")))
    figs = [img_tag(plot_confusion(cls["confusion"], classes, "confusion (counts)"), "confusion counts"),
            img_tag(plot_confusion(cls["confusion_normalised"], classes, "confusion (normalised)", fmt=".2f"),
                    "confusion normalised"),
            img_tag(plot_roc(cls.get("roc", {}), {c: cls["per_class"][c]["auc"] for c in classes},
                             "ROC (one-vs-rest)"), "roc")]
    sections.append(("Confusion matrices and ROC", f"<div class='figs'>{''.join(figs)}</div>"))
    zb = report.get("redshift_bins", {})
    if zb:
        zfigs = [img_tag(plot_zbin_auc(zb), "zbins")]
        for b, d in zb.items():
            if d.get("roc"):
                zfigs.append(img_tag(plot_roc(d["roc"], d.get("auc", {}), f"ROC z {b} (n={d['n']})"), f"roc {b}"))
        sections.append(("Redshift bins", dict_table(zb, "z bin") + f"<div class='figs'>{''.join(zfigs)}</div>"))
    th = report.get("thresholds", {})
    if th:
        sections.append(("Probability thresholds", dict_table(th, "threshold")))
    ch = report.get("chirality")
    if ch:
        parts = []
        if "cvs" in ch:
            parts.append(dict_table({"CVS": ch["cvs"]}))
        if "mirror" in ch:
            parts.append("<h3>Mirror test</h3>" + dict_table({"mirror": ch["mirror"]}))
        if "sweep" in ch:
            parts.append("<h3>Sweep test</h3>" + dict_table({"sweep": ch["sweep"]})
                         + img_tag(plot_sweep(ch["sweep"]), "sweep"))
        if "rotation" in ch:
            rot = ch["rotation"]
            parts.append("<h3>Rotation stability (MC dropout)</h3>"
                         + dict_table({"rotation": {k: rot[k] for k in ("eta_mean", "mc_dropout", "n_passes",
                                                                       "n_rotations", "n_galaxies")}})
                         + dict_table(rot["eta"], "class pair"))
        sections.append(("Chirality diagnostics", "".join(parts)))
    if explanations:
        ex = explanations["examples"]
        sections.append((f"Explanations (target layer {explanations['maps']['target_layer']})",
                         ex.drop(columns=["row"]).to_html(index=False)
                         + img_tag(plot_explanations(explanations["images"], explanations["maps"], ex),
                                   "explanations")))
    if "trials" in report:
        sections.append(("Mean ± σ over trials", dict_table(report["trials"], "metric")))
    meta = {k: str(v) for k, v in report.get("meta", {}).items()}
    return render_html(f"galmorph evaluation: {meta.get('model_uri', '')}", sections, meta)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
