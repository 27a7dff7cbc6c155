"""The winding measurement beside a chirality network: agreement (a promotion check) and an optional
ensemble member for scoring.

Both read the signed winding statistic ``z`` of :func:`galmorph.imaging.winding.winding_sense`
(``z > 0``: Z-wise = GZ "clockwise" = CW; ``|z|`` = its confidence) per galaxy, measured on the image
the network scored (:func:`measure_winding_table`).

**Agreement** (:func:`winding_agreement`): on the galaxies where the measurement is confident
(``|z| >= min_confidence``) *and* the network predicts CW or ACW, the fraction whose predicted sense
differs from the measured one. The measurement says which way arms wind, not whether a galaxy has
arms, so galaxies the network calls "other" are left out.

**Ensemble rule** (:func:`combine_winding`, product of experts on the CW-vs-ACW odds): for a galaxy the
network calls a spiral (``p_other < max_p_other``) and whose measurement is confident
(``|z| >= min_confidence``),

    logit'(CW vs ACW) = log(p_CW / p_ACW) + weight * z

with the spiral mass ``p_CW + p_ACW`` and ``p_other`` unchanged; every other galaxy keeps the network's
probabilities. The rule is odd under a mirror (the mirror of a galaxy has ``-z``, and a
chirality-equivariant network swaps ``p_CW``/``p_ACW``), so the combined output swaps CW/ACW under a
mirror too. ``weight`` (log-odds per unit of ``z``) is chosen on a tuning half with
:func:`fit_winding_weight` (the CW/ACW log-likelihood of the combined output). The defaults
(:data:`DEFAULT_WEIGHT` 3, :data:`DEFAULT_MIN_CONFIDENCE` 0) were chosen that way on the winding
benchmark's tuning half of the public GZ1 CW/ACW galaxies with the chirality ``reference`` network
(``benchmarks/ensemble_weight.py``, ``results/ensemble_weight.md``; chosen again, and again 3, with the
network of the current preset): on the other half the combination scored 0.960 ± 0.024 at full coverage
and 0.994 ± 0.009 on the 80 % most confident (network alone 0.946 ± 0.014 and 0.975 ± 0.014).

**Stacked rule** (:class:`WindingStack`, #26): a model trained with ``winding_stack`` (the chirality
``reference`` preset) records a small logistic stacker fitted on its **validation** split
(:func:`fit_winding_stack`) and scoring applies it instead of the fixed rule. On the network's probabilities
as trained (temperature applied, no class prior), with ``s = log((p_CW + p_ACW) / p_other)``,
``d = log(p_CW / p_ACW)`` and the winding ``z`` (0 where it was not measured):

    s' = a0 + a1 * s + a2 * |z| + a3 * clip(z * d)          (spiral vs other)
    d' = b1 * d + b2 * z                                    (CW vs ACW, no intercept)

``p_other = 1 - sigmoid(s')``, ``p_CW = sigmoid(s') sigmoid(d')``, ``p_ACW = sigmoid(s') sigmoid(-d')``; the
class prior the scoring applies is then applied to these (the stacker is fitted at the prior the network was
trained at). Every feature of ``s'`` is even under a mirror and every feature of ``d'`` odd, so the output
swaps CW/ACW under a mirror and CW and ACW keep one selection function. Six coefficients, L2-regularised, so
that a validation split of about a hundred galaxies can fit them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CW, ACW, OTHER = "CW", "ACW", "other"
RULE = ("product of experts: log(p_CW/p_ACW) += weight * winding_z where |winding_z| >= min_confidence and "
        "p_other < max_p_other; p_CW + p_ACW and p_other unchanged")
ATTRS_KEY = "galmorph.winding_ensemble"
#: Weight and min_confidence chosen on the tuning half (benchmarks/results/ensemble_weight.md).
DEFAULT_WEIGHT, DEFAULT_MIN_CONFIDENCE = 3.0, 0.0


class EnsembleError(ValueError):
    """The winding ensemble cannot be applied (wrong task/classes or settings)."""


@dataclass(frozen=True)
class WindingEnsemble:
    """Settings of the winding ensemble member (see the module docstring)."""

    weight: float = DEFAULT_WEIGHT  #: log-odds added per unit of winding z
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  #: |z| below this: the measurement is not used
    max_p_other: float = 0.5  #: only galaxies the network calls spiral (p_other below this)
    options: dict = field(default_factory=dict)  #: WindingOptions overrides for the measurement
    workers: int = 1  #: measurement processes (not part of the result)
    source: str = "flag"  #: who chose it: ``flag`` or ``model:<source>`` (recorded, not part of the result)
    stack: dict | None = None  #: a :class:`WindingStack` as a dict: the stacked rule replaces the fixed one

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise EnsembleError(f"winding ensemble weight must be finite and >= 0, got {self.weight}")
        if not self.min_confidence >= 0:
            raise EnsembleError(f"winding ensemble min_confidence must be >= 0, got {self.min_confidence}")
        if not 0 < self.max_p_other <= 1:
            raise EnsembleError(f"winding ensemble max_p_other must be in (0, 1], got {self.max_p_other}")
        if self.stack is not None:
            WindingStack.from_dict(self.stack)  # checked here, not at the first shard

    def to_dict(self) -> dict:
        """What the result depends on (recorded in scoring.json and the catalogue metadata)."""
        d = asdict(self)
        d.pop("workers")
        d.pop("source")
        if self.stack is None:
            d.pop("stack")
            d["rule"] = RULE
        else:
            d = {"stack": dict(self.stack), "options": d["options"], "rule": STACK_RULE}
        return d

    def combine(self, probs: np.ndarray, z: np.ndarray, classes: Sequence[str],
                shift: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(combined probabilities, applied mask)`` of ``probs`` (``classes`` order, after the class-prior
        ``shift`` -- per-class log offsets, None: as trained -- that the scoring applied) and ``z``: the stacked
        rule when the settings carry one, else :func:`combine_winding`."""
        if self.stack is not None:
            if shift is not None and hasattr(shift, "detach"):  # a torch tensor (galmorph.models.io.prior_logit_shift)
                shift = shift.detach().cpu().numpy()
            return apply_winding_stack(probs, z, classes, WindingStack.from_dict(self.stack), shift)
        return combine_winding(probs, z, classes, self.weight, self.min_confidence, self.max_p_other)


def _check_classes(classes: Sequence[str]) -> tuple[int, int, int | None]:
    classes = [str(c) for c in classes]
    if CW not in classes or ACW not in classes:
        raise EnsembleError(f"the winding ensemble needs a chirality model (classes CW and ACW), got {classes}")
    return classes.index(CW), classes.index(ACW), classes.index(OTHER) if OTHER in classes else None


def _inputs(probs, z, classes: Sequence[str]) -> tuple[tuple[int, int, int | None], np.ndarray, np.ndarray]:
    """``((i_CW, i_ACW, i_other), probabilities (n, K), z (n,))`` as float64, checked against ``classes``."""
    idx = _check_classes(classes)
    p = np.asarray(probs, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes) or z.shape != (len(p),):
        raise EnsembleError(f"probabilities {p.shape} and z {z.shape} do not match {len(classes)} classes")
    return idx, p, z


def combine_winding(probs: np.ndarray, z: np.ndarray, classes: Sequence[str], weight: float = DEFAULT_WEIGHT,
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE, max_p_other: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Combine class probabilities ``(n, K)`` (``classes`` order) with the signed winding ``z`` ``(n,)``
    by the rule of the module docstring. Returns ``(combined probabilities, applied mask)``; rows with a
    NaN ``z`` or probabilities are left unchanged."""
    (i_cw, i_acw, i_other), p, z = _inputs(probs, z, classes)
    out = p.copy()
    pc, pa = p[:, i_cw], p[:, i_acw]
    spiral = pc + pa
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(z) & (np.abs(z) >= min_confidence) & np.isfinite(spiral) & (spiral > 0)
        if i_other is not None:
            ok &= p[:, i_other] < max_p_other
    if ok.any():
        tiny = 1e-12
        d = np.log(np.maximum(pc[ok], tiny)) - np.log(np.maximum(pa[ok], tiny)) + weight * z[ok]
        frac_cw = 1.0 / (1.0 + np.exp(-d))
        out[ok, i_cw] = spiral[ok] * frac_cw
        out[ok, i_acw] = spiral[ok] * (1.0 - frac_cw)
    return out, ok


STACK_RULE = ("stacked: s' = a0 + a1 log((p_CW+p_ACW)/p_other) + a2 |z| + a3 clip(z log(p_CW/p_ACW)); "
              "d' = b1 log(p_CW/p_ACW) + b2 z; on the probabilities as trained, then the class prior")
#: |z * d| is clipped here (a confident network times a confident measurement says "spiral" no more than this).
AGREEMENT_CLIP = 20.0
#: The fewest validation galaxies of each group (CW, ACW, other) a stacker is fitted on.
STACK_MIN_PER_CLASS = 10


@dataclass(frozen=True)
class WindingStack:
    """The stacked rule's coefficients (module docstring) and what they were fitted on."""

    a: tuple[float, float, float, float]  #: spiral vs other: intercept, s, |z|, clip(z d)
    b: tuple[float, float]  #: CW vs ACW: d, z
    n_fit: dict = field(default_factory=dict)  #: validation galaxies per class
    fitted_on: str = "validation"

    def __post_init__(self) -> None:
        if len(self.a) != 4 or len(self.b) != 2 or not all(math.isfinite(float(v)) for v in (*self.a, *self.b)):
            raise EnsembleError(f"winding stack needs 4 finite spiral and 2 finite CW/ACW coefficients, got "
                                f"a={self.a}, b={self.b}")

    def to_dict(self) -> dict:
        return {"a": [float(v) for v in self.a], "b": [float(v) for v in self.b], "n_fit": dict(self.n_fit),
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict) -> "WindingStack":
        try:
            return cls(a=tuple(float(v) for v in d["a"]), b=tuple(float(v) for v in d["b"]),
                       n_fit=dict(d.get("n_fit") or {}), fitted_on=str(d.get("fitted_on", "validation")))
        except (KeyError, TypeError, ValueError) as exc:
            raise EnsembleError(f"winding stack {d!r} is not a stacker record ({exc})") from None


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, 1e-12))


def stack_features(probs: np.ndarray, z: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(spiral features (n, 3): s, |z|, clip(z d); CW features (n, 2): d, z)`` of probabilities as trained
    (module docstring); a NaN ``z`` counts as 0 (not measured)."""
    i_cw, i_acw, i_other = _check_classes(classes)
    if i_other is None:
        raise EnsembleError(f"the winding stack needs an 'other' class, got {list(classes)}")
    p = np.asarray(probs, dtype=np.float64)
    zz = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    s = _log(p[:, i_cw] + p[:, i_acw]) - _log(p[:, i_other])
    d = _log(p[:, i_cw]) - _log(p[:, i_acw])
    agree = np.clip(zz * d, -AGREEMENT_CLIP, AGREEMENT_CLIP)
    return np.column_stack([s, np.abs(zz), agree]), np.column_stack([d, zz])


def _unshift(p: np.ndarray, shift: Sequence[float] | None) -> np.ndarray:
    """Probabilities moved by the per-class log offsets ``shift`` (None: unchanged), renormalised."""
    if shift is None:
        return p
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = _log(p) + np.asarray(shift, dtype=np.float64)[None, :]
        lp -= np.nanmax(np.where(np.isfinite(lp), lp, np.nan), axis=1, keepdims=True)
        e = np.exp(lp)
        return e / e.sum(axis=1, keepdims=True)


def apply_winding_stack(probs: np.ndarray, z: np.ndarray, classes: Sequence[str], stack: WindingStack,
                        shift: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stacked rule on ``probs`` (``(n, K)``, after the class-prior log offsets ``shift``, None: as trained;
    the offsets are taken off, the stacker applied, and the offsets put back). Returns ``(probabilities,
    applied)``; rows with NaN probabilities are left unchanged."""
    (i_cw, i_acw, i_other), p, z = _inputs(probs, z, classes)
    out = p.copy()
    ok = np.isfinite(p).all(axis=1)
    if not ok.any():
        return out, ok
    # a class the prior never predicts (offset -inf) cannot be moved back: its as-trained share is not kept
    neg = None if shift is None else -np.nan_to_num(np.asarray(shift, dtype=np.float64), nan=0.0, neginf=0.0,
                                                     posinf=0.0)
    raw = _unshift(p[ok], neg)
    fs, fd = stack_features(raw, z[ok], classes)
    a, b = np.asarray(stack.a), np.asarray(stack.b)
    s2 = a[0] + fs @ a[1:]
    d2 = fd @ b
    ps = 1.0 / (1.0 + np.exp(-s2))
    fcw = 1.0 / (1.0 + np.exp(-d2))
    q = np.zeros_like(raw)
    q[:, i_other] = 1.0 - ps
    q[:, i_cw] = ps * fcw
    q[:, i_acw] = ps * (1.0 - fcw)
    out[ok] = _unshift(q, shift)
    return out, ok


def fit_winding_stack(probs: np.ndarray, z: np.ndarray, labels: Sequence, classes: Sequence[str],
                      trained_prior: dict[str, float] | None = None, c: float = 1.0,
                      min_per_class: int = STACK_MIN_PER_CLASS) -> WindingStack:
    """Fit the stacked rule on labelled rows (the training run's validation split): ``probs`` as trained
    (temperature applied, no prior), the winding ``z`` (NaN: not measured) and ``labels``. Each class is
    weighted to ``trained_prior`` (None: uniform), so that the stacked output is at the prior the network
    was trained at and the class prior is applied to it as to the network. ``c``: inverse L2 strength on
    standardised features. Raises :class:`EnsembleError` when a class has fewer than ``min_per_class`` rows."""
    from sklearn.linear_model import LogisticRegression

    i_cw, i_acw, i_other = _check_classes(classes)
    labels = np.asarray([str(x) for x in labels], dtype=object)
    n = {k: int((labels == k).sum()) for k in (CW, ACW, OTHER)}
    short = {k: v for k, v in n.items() if v < min_per_class}
    if short:
        raise EnsembleError(f"winding stack: too few validation galaxies to fit it ({n}; at least {min_per_class} "
                            "of each of CW, ACW and other)")
    prior = {k: float((trained_prior or {}).get(k, 1.0)) for k in (CW, ACW, OTHER)}
    tot = sum(prior.values())
    prior = {k: v / tot for k, v in prior.items()} if tot > 0 else {k: 1 / 3 for k in prior}
    fs, fd = stack_features(probs, z, classes)
    w = np.array([prior[k] / (n[k] / len(labels)) for k in labels], dtype=np.float64)

    def fit(x: np.ndarray, y: np.ndarray, sw: np.ndarray, intercept: bool) -> tuple[float, np.ndarray]:
        scale = x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        m = LogisticRegression(C=c, fit_intercept=intercept, max_iter=1000)
        m.fit(x / scale, y, sample_weight=sw / sw.mean())
        return (float(m.intercept_[0]) if intercept else 0.0), m.coef_[0] / scale

    a0, a = fit(fs, labels != OTHER, w, True)
    sp = labels != OTHER
    _b0, b = fit(fd[sp], labels[sp] == CW, w[sp], False)
    return WindingStack(a=(a0, *map(float, a)), b=tuple(map(float, b)), n_fit=n)


def measured_sense(z: np.ndarray, min_confidence: float) -> np.ndarray:
    """``"CW"`` / ``"ACW"`` where ``|z| >= min_confidence``, else None (object array)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.full(len(z), None, dtype=object)
    with np.errstate(invalid="ignore"):
        conf = np.isfinite(z) & (np.abs(z) >= min_confidence) & (z != 0)
    out[conf & (z > 0)] = CW
    out[conf & (z < 0)] = ACW
    return out


def winding_agreement(pred: Sequence, z: np.ndarray, min_confidence: float = 2.0) -> dict[str, Any]:
    """Disagreement of predicted classes ``pred`` with the measured winding sense (``z``) on the rows where
    the measurement is confident and the prediction is CW or ACW. Returns ``n_rows``, ``n_confident``,
    ``n_compared``, ``n_disagree``, ``disagreement`` (NaN when nothing is compared), ``agreement`` and
    ``min_confidence``."""
    pred = np.asarray(["" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in pred],
                      dtype=object)
    meas = measured_sense(z, min_confidence)
    confident = np.array([m is not None for m in meas], dtype=bool)
    spiral = np.isin(pred, [CW, ACW])
    cmp = confident & spiral
    n = int(cmp.sum())
    dis = int((pred[cmp] != meas[cmp].astype(str)).sum()) if n else 0
    d = dis / n if n else float("nan")
    return {"n_rows": int(len(pred)), "n_confident": int(confident.sum()), "n_compared": n, "n_disagree": dis,
            "disagreement": d, "agreement": 1.0 - d if n else float("nan"), "min_confidence": float(min_confidence)}


def measure_winding_table(rows: pd.DataFrame, data_root: str | Path | None = None, options: dict | None = None,
                          workers: int = 1, image_column: str = "image_uri") -> pd.DataFrame:
    """``object_id, winding_score, winding_z`` of every row (``image_column`` images; NaN where the image
    cannot be read or nothing was measured), in row order. The winding sense is thresholded later."""
    from galmorph.catalogue.winding import measure_winding_manifest
    from galmorph.imaging.winding import WindingOptions

    opt = WindingOptions.from_dict(dict(options or {}))
    base = pd.DataFrame({"object_id": rows["object_id"].astype(str).to_numpy(),
                         image_column: rows[image_column].to_numpy()})
    base["_pos"] = np.arange(len(base))
    measured, quarantine = measure_winding_manifest(base, data_root=data_root, options=opt, workers=workers,
                                                    image_column=image_column, stage="winding-ensemble")
    if quarantine:
        log.warning("winding: %d image(s) not measured (first: %s)", len(quarantine), quarantine[0]["reason"])
    out = pd.DataFrame({"object_id": base["object_id"], "winding_score": np.nan, "winding_z": np.nan})
    if len(measured):
        pos = measured["_pos"].to_numpy(dtype=int)
        out.loc[pos, "winding_score"] = measured["winding_score"].to_numpy(dtype=float)
        out.loc[pos, "winding_z"] = measured["winding_z"].to_numpy(dtype=float)
    return out


def winding_report(pred: pd.DataFrame, manifest: pd.DataFrame, data_root: str | Path | None = None,
                   table: pd.DataFrame | None = None, min_confidence: float = 2.0,
                   options: dict | None = None) -> dict[str, Any]:
    """The evaluation report's ``winding`` block: :func:`winding_agreement` of the predictions ``pred``
    (``object_id``, ``pred``, ``error``) with the measurement on the manifest's images (or ``table``, a
    :func:`measure_winding_table` of the same objects, so that two models share one measurement). Adds
    ``winding_z`` to ``pred`` in place."""
    if table is None:
        table = measure_winding_table(manifest, data_root=data_root, options=options)
    zmap = pd.Series(table["winding_z"].to_numpy(dtype=float), index=table["object_id"].astype(str))
    zmap = zmap[~zmap.index.duplicated()]
    z = zmap.reindex(pred["object_id"].astype(str)).to_numpy(dtype=float)
    pred["winding_z"] = z
    ok = pred["error"].isna().to_numpy() if "error" in pred.columns else np.ones(len(pred), dtype=bool)
    out = winding_agreement(pred.loc[ok, "pred"].tolist(), z[ok], min_confidence)
    out["n_measured"] = int(np.isfinite(z).sum())
    return out


def winding_metrics(block: dict | None) -> dict[str, float]:
    """Flat MLflow metrics of a report's ``winding`` block (``winding_disagreement``, ...)."""
    if not block:
        return {}
    return {f"winding_{k}": float(block[k]) for k in ("disagreement", "agreement", "n_compared", "n_confident")
            if k in block}


def fit_winding_weight(probs: np.ndarray, z: np.ndarray, labels: Sequence, classes: Sequence[str],
                       grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                       min_confidence: float = 2.0, max_p_other: float = 0.5) -> tuple[float, pd.DataFrame]:
    """Choose the ensemble weight on a tuning set: the ``grid`` value with the highest mean CW/ACW
    log-likelihood (``log p(label | spiral)``) of the combined output over the CW/ACW-labelled rows.
    Returns ``(weight, table of weight, log_likelihood, accuracy, n)``."""
    from sklearn.metrics import accuracy_score

    i_cw, i_acw, _ = _check_classes(classes)
    labels = np.asarray([str(x) for x in labels])
    rows = np.isin(labels, [CW, ACW])
    if not rows.any():
        raise EnsembleError("no CW/ACW-labelled rows to choose the winding weight on")
    is_cw = labels[rows] == CW
    recs = []
    for w in grid:
        comb, _ = combine_winding(np.asarray(probs)[rows], np.asarray(z)[rows], classes, w, min_confidence, max_p_other)
        s = comb[:, i_cw] + comb[:, i_acw]
        pcw = np.clip(comb[:, i_cw] / np.maximum(s, 1e-12), 1e-9, 1 - 1e-9)
        ll = np.where(is_cw, np.log(pcw), np.log(1 - pcw))
        recs.append({"weight": float(w), "log_likelihood": float(ll.mean()),
                     "accuracy": float(accuracy_score(is_cw, pcw >= 0.5)), "n": int(rows.sum())})
    table = pd.DataFrame(recs)
    best = float(table.loc[table["log_likelihood"].idxmax(), "weight"])
    return best, table


def apply_winding_ensemble(scores: pd.DataFrame, rows: pd.DataFrame, classes: Sequence[str],
                           ensemble: WindingEnsemble, threshold: float, data_root: str | Path | None = None,
                           shift: Sequence[float] | None = None) -> pd.DataFrame:
    """The scoring table ``scores`` (``p_<class>``, ``pred``, ``p_pred``, ``high_confidence``; row i
    scored from ``rows.iloc[i]``'s image) with the winding ensemble applied: ``p_CW``/``p_ACW``,
    ``pred``, ``p_pred`` and ``high_confidence`` are the combined ones; added: ``p_CW_network``,
    ``p_ACW_network``, ``winding_score``, ``winding_z`` and ``winding_ensemble`` (applied to the row).
    The settings are recorded in ``DataFrame.attrs[ATTRS_KEY]`` (Parquet keeps them). ``shift``: the class
    prior's per-class log offsets the scores carry (the stacked rule works on the probabilities as trained).
    """
    _check_classes(classes)
    if len(scores) != len(rows):
        raise EnsembleError(f"{len(scores)} scored rows but {len(rows)} image rows")
    out = scores.copy()
    pcols = [f"p_{c}" for c in classes]
    if len(out):
        tab = measure_winding_table(rows, data_root=data_root, options=ensemble.options, workers=ensemble.workers)
        z = tab["winding_z"].to_numpy(dtype=float)
        comb, applied = ensemble.combine(out[pcols].to_numpy(dtype=float), z, classes, shift)
    else:
        tab = pd.DataFrame({"winding_score": [], "winding_z": []})
        comb, applied = np.zeros((0, len(classes))), np.zeros(0, dtype=bool)
    out["p_CW_network"] = out["p_CW"].astype(np.float32)
    out["p_ACW_network"] = out["p_ACW"].astype(np.float32)
    for j, c in enumerate(pcols):
        out[c] = comb[:, j].astype(np.float32)
    arg = comb.argmax(axis=1) if len(comb) else np.zeros(0, dtype=int)
    p_pred = comb[np.arange(len(comb)), arg] if len(comb) else np.zeros(0)
    out["pred"] = np.asarray([str(c) for c in classes], dtype=object)[arg]
    out["p_pred"] = p_pred.astype(np.float32)
    out["high_confidence"] = p_pred >= threshold
    out["winding_score"] = tab["winding_score"].to_numpy(dtype=float)
    out["winding_z"] = z if len(out) else np.zeros(0)
    out["winding_ensemble"] = applied
    out.attrs[ATTRS_KEY] = ensemble.to_dict()
    return out


def ensemble_for(spec, enabled: bool | None = None, weight: float | None = None,
                 min_confidence: float | None = None) -> WindingEnsemble | None:
    """The winding ensemble to apply for a model of ``spec`` (None: off). ``enabled`` True/False: the caller's
    choice (``--winding-ensemble``/``--no-winding-ensemble``); None: what the model recorded
    (``spec.extra["ensemble"]``, :mod:`galmorph.training.defaults`; off for a model that recorded none or a
    model without CW/ACW). A model that recorded a stacker (``stack``, fitted on its validation split) gets the
    stacked rule, unless ``weight`` or ``min_confidence`` is given: those ask for the fixed rule.
    ``weight``/``min_confidence`` None: the model's recorded values, else the defaults.
    The returned settings carry ``source`` = ``model:<source>`` or ``flag``."""
    from galmorph.models.io import model_ensemble

    rec = model_ensemble(spec) if spec is not None else None
    classes = [str(c) for c in getattr(spec, "classes", [])]
    if enabled is None:
        enabled = bool(rec and rec.get("winding_ensemble")) and {CW, ACW} <= set(classes)
        source = f"model:{(rec or {}).get('source', 'default')}"
    else:
        source = "flag"
    if not enabled:
        return None
    w = weight if weight is not None else float((rec or {}).get("weight", DEFAULT_WEIGHT))
    m = min_confidence if min_confidence is not None else float((rec or {}).get("min_confidence",
                                                                                DEFAULT_MIN_CONFIDENCE))
    stack = (rec or {}).get("stack")
    if weight is not None or min_confidence is not None:  # the caller asks for the fixed rule with these values
        stack, source = None, "flag"
    elif not isinstance(stack, dict) or OTHER not in classes:
        stack = None
    return WindingEnsemble(weight=float(w), min_confidence=float(m), source=source, stack=stack)


def applied_ensemble_label(ens: WindingEnsemble | None) -> str:
    """A one-line tag value: ``off``, ``winding(weight=3,min_confidence=0,source=model:default)`` or
    ``winding-stack(fitted_on=validation,n=102,source=model:validation)``."""
    if ens is None:
        return "off"
    if ens.stack is not None:
        n = sum(int(v) for v in (ens.stack.get("n_fit") or {}).values())
        return f"winding-stack(fitted_on={ens.stack.get('fitted_on', 'validation')},n={n},source={ens.source})"
    return f"winding(weight={ens.weight:g},min_confidence={ens.min_confidence:g},source={ens.source})"


def ensemble_settings(catalogue: str | Path | pd.DataFrame) -> dict | None:
    """The winding ensemble settings recorded in a catalogue (path or DataFrame read from Parquet), or None."""
    if not isinstance(catalogue, pd.DataFrame):
        import pyarrow.parquet as pq

        meta = pq.read_schema(catalogue).metadata or {}
        raw = meta.get(b"PANDAS_ATTRS")
        if raw is None:
            return None
        import json

        return json.loads(raw).get(ATTRS_KEY)
    return catalogue.attrs.get(ATTRS_KEY)
