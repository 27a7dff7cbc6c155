"""Chirality diagnostics: the chirality violation statistic, the CVS sweep and mirror tests, and
rotation stability with Monte-Carlo dropout.

* ``CVS = (n_ACW - n_CW) / sqrt(n_ACW + n_CW)``: the excess of anticlockwise over clockwise spirals in
  units of the Poisson scatter of an isotropic sample (uncertainty 1 by construction: under the null
  hypothesis of equal probabilities, ``n_ACW - n_CW`` has standard deviation ``sqrt(N)``).
* **Sweep test**: resample the spiral-only part of a labelled test set so that the *set* CVS runs from
  -12 to +12 in steps of 3 at fixed N, compute the CVS of the *predictions* for each resampled set and
  fit ``predicted = slope * set + intercept``. An unbiased classifier has slope ~1, intercept ~0.
* **Mirror test**: predictions on the left-right mirrored images must give ``-CVS`` (a
  chirality-equivariant model does so exactly).
* **Rotation stability**: ``N`` stochastic passes (MC dropout) x ``K`` rotations in 0-180 degrees give a
  distribution of each class probability per galaxy; the distribution-free overlap index
  ``eta`` (Pastore & Calcagni 2019: the area shared by two density estimates) between the
  distributions of two classes measures how separable the classification is; we report eta per class
  pair (mean over galaxies) and its mean over pairs.

MC dropout on exported (``pt2``) graphs: ``torch.export`` keeps dropout as ``aten.dropout(x, p,
train=False)`` nodes; :func:`mc_dropout` flips them to ``train=True`` for the duration of the
diagnostic (and back). For ``nn.Module`` models the dropout layers are put in train mode. A model with
no dropout at all is deterministic: the N passes are then identical and eta measures the rotation
scatter only (reported as ``mc_dropout: false``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from galmorph.tasks import chirality_violation

log = logging.getLogger(__name__)

CW, ACW, OTHER = "CW", "ACW", "other"
_trapz = getattr(np, "trapezoid", None) or np.trapz
SWEEP_CVS = tuple(range(-12, 13, 3))


# --------------------------------------------------------------------------------------------
# the statistic
# --------------------------------------------------------------------------------------------
def cvs_of_labels(labels: Sequence) -> float:
    """CVS of a sequence of class labels (anything other than CW/ACW is ignored)."""
    a = np.asarray([str(x) for x in labels], dtype=object)
    return chirality_violation(int((a == ACW).sum()), int((a == CW).sum()))[0]


def cvs_summary(y_true: Sequence, y_pred: Sequence) -> dict:
    """CVS of labels and of predictions with their counts (same objects)."""
    t = np.asarray([str(x) for x in y_true], dtype=object)
    p = np.asarray([str(x) for x in y_pred], dtype=object)
    ct, st = chirality_violation(int((t == ACW).sum()), int((t == CW).sum()))
    cp, sp = chirality_violation(int((p == ACW).sum()), int((p == CW).sum()))
    return {"cvs_labels": ct, "cvs_pred": cp, "cvs_sigma": 1.0, "cvs_diff": cp - ct,
            "n_acw_labels": int((t == ACW).sum()), "n_cw_labels": int((t == CW).sum()),
            "n_acw_pred": int((p == ACW).sum()), "n_cw_pred": int((p == CW).sum())}


# --------------------------------------------------------------------------------------------
# sweep test
# --------------------------------------------------------------------------------------------
def sweep_counts(set_cvs: float, n: int) -> tuple[int, int]:
    """``(n_acw, n_cw)`` with n_acw + n_cw = n whose CVS is closest to ``set_cvs``."""
    n_acw = int(round((n + set_cvs * math.sqrt(n)) / 2))
    if not 0 <= n_acw <= n:
        raise ValueError(f"a set CVS of {set_cvs} needs N >= {set_cvs ** 2:.0f} objects, got N={n}")
    return n_acw, n - n_acw


def cvs_sweep(y_true: Sequence, y_pred: Sequence, set_cvs: Sequence[float] = SWEEP_CVS, n: int | None = None,
              realisations: int = 10, seed: int = 0, replace: bool = True) -> dict:
    """The sweep test on a spiral test set (rows labelled CW/ACW; others are dropped).

    For each target CVS, ``realisations`` sets of ``n`` objects are drawn (``n_acw`` from the ACW-
    labelled rows, ``n_cw`` from the CW ones; with replacement by default so that any N works) and
    the CVS of their *predicted* labels is computed. A straight line is fitted to predicted vs the
    realised set CVS. ``n`` defaults to max(number of spirals, 144) (CVS = +-12 needs N >= 144).
    Returns ``slope, intercept, r, n, realisations`` and the ``points`` table (set, predicted).
    """
    t = np.asarray([str(x) for x in y_true], dtype=object)
    p = np.asarray([str(x) for x in y_pred], dtype=object)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} rows, y_pred {len(p)}")
    acw_idx, cw_idx = np.flatnonzero(t == ACW), np.flatnonzero(t == CW)
    if len(acw_idx) == 0 or len(cw_idx) == 0:
        raise ValueError(f"the sweep test needs CW- and ACW-labelled spirals; got {len(cw_idx)} CW, "
                         f"{len(acw_idx)} ACW")
    n_spiral = len(acw_idx) + len(cw_idx)
    n = int(n) if n is not None else max(n_spiral, int(math.ceil(max(abs(s) for s in set_cvs) ** 2)))
    rng = np.random.default_rng(seed)
    rows = []
    for s in set_cvs:
        n_acw, n_cw = sweep_counts(s, n)
        if not replace and (n_acw > len(acw_idx) or n_cw > len(cw_idx)):
            raise ValueError(f"set CVS {s} at N={n} needs {n_acw} ACW and {n_cw} CW spirals without "
                             f"replacement; the test set has {len(acw_idx)} and {len(cw_idx)}")
        for r in range(realisations):
            pick = np.r_[rng.choice(acw_idx, n_acw, replace=replace), rng.choice(cw_idx, n_cw, replace=replace)]
            rows.append({"target": float(s), "realisation": r, "set_cvs": cvs_of_labels(t[pick]),
                         "pred_cvs": cvs_of_labels(p[pick]), "n_pred_other": int((p[pick] == OTHER).sum())})
    pts = pd.DataFrame(rows)
    finite = np.isfinite(pts["pred_cvs"])
    if finite.sum() < 2:
        raise ValueError("the predictions contain (almost) no CW/ACW spirals: cannot fit the sweep")
    slope, intercept = np.polyfit(pts.loc[finite, "set_cvs"], pts.loc[finite, "pred_cvs"], 1)
    r = float(np.corrcoef(pts.loc[finite, "set_cvs"], pts.loc[finite, "pred_cvs"])[0, 1])
    return {"slope": float(slope), "intercept": float(intercept), "r": r, "n": n,
            "realisations": int(realisations), "n_spirals_available": int(n_spiral),
            "points": pts.to_dict(orient="list")}


# --------------------------------------------------------------------------------------------
# mirror test
# --------------------------------------------------------------------------------------------
def mirror_test(pred: pd.DataFrame, pred_mirror: pd.DataFrame, atol: float = 1e-5) -> dict:
    """Compare predictions on images and on their mirror images (outputs of
    :func:`galmorph.scoring.inference.predict_manifest` with ``mirror=False/True``, same rows).

    Passes when the CVS of the mirrored predictions is exactly minus the original CVS, every
    CW <-> ACW prediction swaps (``other`` stays), and ``p_CW(mirror) = p_ACW(original)`` etc.
    within ``atol``. Returns the CVS values, the fraction of swapped labels and the largest
    probability mismatch.
    """
    if len(pred) != len(pred_mirror) or not (pred["object_id"].to_numpy() == pred_mirror["object_id"].to_numpy()).all():
        raise ValueError("mirror test: the two prediction tables must hold the same objects in the same order")
    for c in (f"p_{CW}", f"p_{ACW}"):
        if c not in pred.columns:
            raise ValueError(f"mirror test needs a chirality model (column {c} missing)")
    ok = pred["pred"].notna().to_numpy() & pred_mirror["pred"].notna().to_numpy()
    a, b = pred[ok], pred_mirror[ok]
    swap = {CW: ACW, ACW: CW}
    expected = a["pred"].map(lambda x: swap.get(x, x)).to_numpy()
    # a mirror-symmetric image gives p_CW == p_ACW for an equivariant model: the arg-max is then a tie and
    # its label is arbitrary, so such rows are left out of the label check (and counted)
    tie = np.zeros(len(a), dtype=bool)
    for t in (a, b):
        pc, pa = t[f"p_{CW}"].to_numpy(), t[f"p_{ACW}"].to_numpy()
        top = t[[c for c in t.columns if c.startswith("p_") and c != "p_pred"]].to_numpy().max(axis=1)
        tie |= (np.abs(pc - pa) <= atol) & (np.maximum(pc, pa) >= top - atol)
    same = expected == b["pred"].to_numpy()
    label_swap = float(same[~tie].mean()) if (~tie).any() else (1.0 if ok.any() else float("nan"))
    diffs = [np.abs(a[f"p_{CW}"].to_numpy() - b[f"p_{ACW}"].to_numpy()),
             np.abs(a[f"p_{ACW}"].to_numpy() - b[f"p_{CW}"].to_numpy())]
    if f"p_{OTHER}" in a.columns:
        diffs.append(np.abs(a[f"p_{OTHER}"].to_numpy() - b[f"p_{OTHER}"].to_numpy()))
    max_diff = float(max(d.max() for d in diffs)) if ok.any() else float("nan")
    c0, c1 = cvs_of_labels(a["pred"][~tie]), cvs_of_labels(b["pred"][~tie])
    cvs_sum = c0 + c1
    passed = bool(ok.any() and label_swap == 1.0 and max_diff <= atol and (not np.isfinite(cvs_sum) or cvs_sum == 0))
    return {"cvs_pred": c0, "cvs_pred_mirror": c1, "cvs_sum": cvs_sum, "label_swap_fraction": label_swap,
            "max_prob_diff": max_diff, "n": int(ok.sum()), "n_ties": int(tie.sum()), "atol": atol, "passed": passed}


# --------------------------------------------------------------------------------------------
# overlap index and rotation stability
# --------------------------------------------------------------------------------------------
def _kde(x: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z * z).sum(axis=1) / (len(x) * bw * math.sqrt(2 * math.pi))


def overlap_index(a: Sequence[float], b: Sequence[float], grid_size: int = 512, min_bw: float = 0.01,
                  support: tuple[float, float] = (0.0, 1.0)) -> float:
    """Distribution-free overlap index eta of two samples: the integral of min(f_a, f_b) of their
    Gaussian kernel density estimates (Silverman bandwidth, at least ``min_bw``) over ``support``,
    with the densities renormalised on the support. 1 = identical distributions, 0 = disjoint."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("overlap_index needs two non-empty samples")
    grid = np.linspace(support[0], support[1], grid_size)
    dens = []
    for x in (a, b):
        sd = x.std(ddof=1) if len(x) > 1 else 0.0
        iqr = np.subtract(*np.percentile(x, [75, 25])) / 1.34 if len(x) > 1 else 0.0
        spread = min(sd, iqr) if min(sd, iqr) > 0 else max(sd, iqr)
        bw = max(0.9 * spread * len(x) ** (-0.2), min_bw)
        f = _kde(x, grid, bw)
        area = _trapz(f, grid)
        dens.append(f / area if area > 0 else f)
    return float(np.clip(_trapz(np.minimum(*dens), grid), 0.0, 1.0))


def _is_graph(module) -> bool:
    import torch.fx

    return isinstance(module, torch.fx.GraphModule)


def _dropout_nodes(gm):
    import torch

    targets = {torch.ops.aten.dropout.default, torch.ops.aten.feature_dropout.default,
               torch.ops.aten.alpha_dropout.default, torch.ops.aten.feature_alpha_dropout.default}
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets
            and len(n.args) >= 2 and isinstance(n.args[1], (int, float)) and n.args[1] > 0]


def has_dropout(module) -> bool:
    """Whether the model contains dropout (p > 0) that MC dropout can switch on."""
    import torch.nn as nn

    if _is_graph(module):
        return bool(_dropout_nodes(module)) or any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                                   for m in module.modules())
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


@contextlib.contextmanager
def mc_dropout(module):
    """Enable dropout at inference inside the block (restored afterwards); yields whether any dropout
    was found. Handles ``nn.Module`` dropout layers and exported ``aten.dropout`` graph nodes."""
    import torch.nn as nn

    changed_nodes = []
    changed_mods = []
    if _is_graph(module):
        for node in _dropout_nodes(module):
            args = list(node.args)
            if len(args) >= 3 and args[2] is False:
                args[2] = True
                node.args = tuple(args)
                changed_nodes.append(node)
        if changed_nodes:
            module.recompile()
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and not m.training:
            m.train()
            changed_mods.append(m)
    try:
        yield bool(changed_nodes or changed_mods)
    finally:
        for node in changed_nodes:
            args = list(node.args)
            args[2] = False
            node.args = tuple(args)
        if changed_nodes:
            module.recompile()
        for m in changed_mods:
            m.eval()


def rotate_batch(x, angle_deg: float):
    """Rotate a ``(B, C, H, W)`` batch by ``angle_deg`` (counter-clockwise, bilinear, zero fill)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if angle_deg % 360 == 0:
        return x
    return TF.rotate(x, float(angle_deg), interpolation=InterpolationMode.BILINEAR, fill=0.0)


def rotation_stability(module, images, classes: Sequence[str], n_passes: int = 10, n_rotations: int = 8,
                       max_angle: float = 180.0, use_mc_dropout: bool = True, seed: int = 0,
                       batch_size: int = 64) -> dict:
    """MC-dropout x rotation probability distributions and their pairwise overlap index eta.

    ``images``: float tensor ``(B, C, S, S)`` (model input). Each galaxy is scored ``n_passes`` times
    at each of ``n_rotations`` angles evenly spaced in ``[0, max_angle]``; for each class pair the
    overlap index of the two classes' ``n_passes * n_rotations`` probabilities is computed per galaxy.
    Returns ``eta[pair] = {mean, std, median}`` over galaxies, ``eta_mean`` (mean over pairs of the
    per-pair means), ``mc_dropout`` (whether dropout was active), ``angles`` and per-galaxy values.
    """
    import torch

    classes = [str(c) for c in classes]
    if n_passes < 1 or n_rotations < 1:
        raise ValueError("n_passes and n_rotations must be >= 1")
    angles = np.linspace(0.0, max_angle, n_rotations).tolist()
    torch.manual_seed(seed)
    b = images.shape[0]
    probs = np.zeros((b, n_passes * n_rotations, len(classes)))
    ctx = mc_dropout(module) if use_mc_dropout else contextlib.nullcontext(False)
    with ctx as active, torch.no_grad():
        passes = n_passes if active else 1
        if not active:
            log.warning("rotation stability: the model has no dropout (or MC dropout is off); the %d passes are "
                        "identical, eta measures the rotation scatter only", n_passes)
        k = 0
        for ang in angles:
            xr = rotate_batch(images, ang)
            for _ in range(passes):
                out = []
                for i in range(0, b, batch_size):
                    out.append(torch.softmax(module(xr[i:i + batch_size]).float(), dim=1).cpu().numpy())
                pr = np.concatenate(out)
                reps = n_passes if not active else 1
                for _ in range(reps):
                    probs[:, k] = pr
                    k += 1
    pairs = [(i, j) for i in range(len(classes)) for j in range(i + 1, len(classes))]
    eta: dict[str, dict] = {}
    per_galaxy: dict[str, list] = {}
    for i, j in pairs:
        name = f"{classes[i]}-{classes[j]}"
        vals = np.array([overlap_index(probs[g, :, i], probs[g, :, j]) for g in range(b)])
        per_galaxy[name] = vals.tolist()
        eta[name] = {"mean": float(vals.mean()), "std": float(vals.std()), "median": float(np.median(vals))}
    return {"eta": eta, "eta_mean": float(np.mean([v["mean"] for v in eta.values()])) if eta else float("nan"),
            "mc_dropout": bool(active), "n_passes": int(n_passes), "n_rotations": int(n_rotations),
            "angles": angles, "n_galaxies": int(b), "per_galaxy": per_galaxy,
            "prob_std_mean": float(probs.std(axis=1).mean()),
            "mean_probs": probs.mean(axis=1).tolist()}  # per galaxy, over rotations and passes


# --------------------------------------------------------------------------------------------
# MC-dropout predictive spread
# --------------------------------------------------------------------------------------------
class NoDropoutError(ValueError):
    """MC dropout was asked of a model that has no dropout to switch on."""


def mc_dropout_predictive(module, images, n_passes: int = 20, seed: int = 0, batch_size: int = 64) -> dict:
    """Monte-Carlo-dropout predictive distribution (Gal & Ghahramani 2016) of ``images`` ``(B, C, S, S)``.

    The model's dropout is switched on (:func:`mc_dropout`) and every image scored ``n_passes`` times.
    Returns ``mean`` ``(B, K)`` (the predictive probabilities), ``std`` ``(B, K)`` (their spread over
    passes), ``spread`` (mean of ``std``), ``entropy`` ``(B,)`` of the mean, ``mutual_information``
    ``(B,)`` (entropy of the mean minus the mean entropy: the model-uncertainty part) and
    ``n_passes``. A model without dropout is refused (:class:`NoDropoutError`): its passes would all be
    identical and the "spread" a meaningless zero.
    """
    import torch

    if n_passes < 2:
        raise ValueError(f"MC dropout needs n_passes >= 2, got {n_passes}")
    if not has_dropout(module):
        raise NoDropoutError(f"model {type(module).__name__} has no dropout layer with p > 0: MC-dropout predictive "
                             "spread is undefined for it (every pass gives the same prediction); train it with "
                             "head dropout (chirality networks: --set classifier_dropout=0.2; Zoobot head: "
                             "head_dropout) or use rotation stability")
    torch.manual_seed(seed)
    b = images.shape[0]
    probs = []
    with mc_dropout(module) as active, torch.no_grad():
        if not active:
            raise NoDropoutError(f"model {type(module).__name__}: its dropout could not be switched on for MC dropout")
        for _ in range(n_passes):
            out = [torch.softmax(module(images[i:i + batch_size]).float(), dim=1).cpu().numpy()
                   for i in range(0, b, batch_size)]
            probs.append(np.concatenate(out))
    p = np.stack(probs, axis=1)  # (B, T, K)
    mean = p.mean(axis=1)

    def _ent(q):
        return -(q * np.log(np.clip(q, 1e-12, 1))).sum(axis=-1)

    ent = _ent(mean)
    mi = ent - _ent(p).mean(axis=1)
    std = p.std(axis=1)
    return {"mean": mean, "std": std, "spread": float(std.mean()), "entropy": ent, "mutual_information": mi,
            "n_passes": int(n_passes)}
