"""Drift features: per-object numbers whose distributions are compared between data sets.

Four families, all keyed by ``object_id`` (plus the grouping columns ``survey`` and ``z_bin``):

* **image features** (:func:`image_features`), measured on the image file itself:
  ``sky_level`` and ``sky_noise`` (``sep`` background: global level and rms), ``total_flux``
  (background-subtracted flux inside the aperture), ``r50_px`` / ``r90_px`` (radii enclosing 50 %
  and 90 % of that flux, in original pixels), ``size_frac`` (R50 over the image width),
  ``concentration`` (R90/R50), ``ellipticity`` (1 - b/a from flux-weighted second moments),
  ``colour_r_g`` / ``colour_b_g`` (channel flux ratios of RGB renderings; NaN for single-band
  images), ``a1`` (the m = 1 lopsidedness amplitude when :mod:`galmorph.imaging.a1` is available)
  and ``masked_fraction`` (non-finite, no-data or saturated pixels);
* **catalogue features** (:func:`catalogue_features`), copied from manifest columns when present:
  ``z``, magnitudes (``mag_<band>``), ``cat_r90``, ``cat_r50``, ``cat_petro_theta``,
  ``cat_axis_ratio``, ``cat_log_mstar``;
* **prediction features** (:func:`prediction_features`): class probabilities ``p_<class>``,
  predicted class ``pred`` and ``confidence`` (the top probability);
* **embedding features** (:func:`embedding_pca_features`): an encoder embedding reduced by PCA
  (``emb_pc1..k``), the PCA fitted on the reference set and reused for the current one.

:func:`compute_drift_features` assembles them for a manifest; unreadable images are quarantined
with the object and the reason (rows in = rows out + rows quarantined).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from galmorph.catalogue.manifest import ManifestError, assign_z_bin, quarantine_frame, quarantine_record, resolve_image_uri

log = logging.getLogger(__name__)

STAGE = "drift_features"

#: Image feature columns, in output order.
IMAGE_FEATURES: tuple[str, ...] = (
    "sky_level", "sky_noise", "total_flux", "r50_px", "r90_px", "size_frac", "concentration", "ellipticity",
    "colour_r_g", "colour_b_g", "a1", "masked_fraction",
)

#: Catalogue feature name -> accepted manifest column names (case-insensitive), first match wins.
CATALOGUE_ALIASES: dict[str, tuple[str, ...]] = {
    "cat_r90": ("petror90_r", "petro_r90", "r90", "r90_arcsec", "cat_r90"),
    "cat_r50": ("petror50_r", "petro_r50", "r50", "r50_arcsec", "cat_r50"),
    "cat_petro_theta": ("petro_theta", "petro_theta_arcsec", "petrorad_r", "cat_petro_theta"),
    "cat_axis_ratio": ("axis_ratio", "sersic_ba", "ba", "petro_ba90", "expab_r", "ab_exp_r", "cat_axis_ratio"),
    "cat_log_mstar": ("logmstar", "log_mstar", "cat_log_mstar"),
}
#: Magnitude columns: ``mag_r``, ``petroMag_r``, ``modelMag_g``, ``cmodelmag_i``, ``r_mag``, ...
MAG_RE = re.compile(r"^(?:(?:petro|model|cmodel|fiber|psf|sersic)?mag_?(?P<b1>[ugrizyGRZ])|(?P<b2>[ugrizy])_?mag)$",
                    re.IGNORECASE)

#: Columns that identify or group rows (never treated as features).
KEY_COLUMNS: tuple[str, ...] = ("object_id", "survey", "z_bin")

_A1_STATE: dict[str, Any] = {}


class DriftFeatures(NamedTuple):
    """Result of :func:`compute_drift_features`: ``features`` (one row per readable object) and
    ``quarantine`` (``object_id, stage, reason, row`` for every object that is not in ``features``)."""

    features: pd.DataFrame
    quarantine: pd.DataFrame


# --------------------------------------------------------------------------------------------
# image features
# --------------------------------------------------------------------------------------------
def _a1_function() -> Callable | None:
    """``galmorph.imaging.a1.lopsidedness_a1`` when that module exists (imported once, lazily)."""
    if "fn" not in _A1_STATE:
        try:
            from galmorph.imaging.a1 import lopsidedness_a1  # type: ignore[import-not-found]

            _A1_STATE["fn"] = lopsidedness_a1
        except Exception as exc:  # noqa: BLE001 - optional feature
            log.info("A1 drift feature skipped: galmorph.imaging.a1.lopsidedness_a1 not available (%s)", exc)
            _A1_STATE["fn"] = None
    return _A1_STATE["fn"]


def _measure_a1(grey: np.ndarray, centre: tuple[float, float], r50: float, r90: float) -> float:
    """A1 of the (downsampled) grey image around ``centre`` (row, column) between R50 and R90."""
    fn = _a1_function()
    if fn is None or not (np.isfinite(r50) and np.isfinite(r90)) or not 0 < r50 < r90:
        return float("nan")
    try:
        res = fn(grey, x0=centre[1], y0=centre[0], r50=r50, r90=r90, refine_centre=False, mask_sources=False)
    except Exception as exc:  # noqa: BLE001 - a failed optional measurement is NaN, not a lost row
        log.debug("A1 measurement failed: %s", exc)
        return float("nan")
    for attr in ("a1", "A1", "value"):
        if isinstance(res, dict) and attr in res:
            res = res[attr]
            break
        if hasattr(res, attr):
            res = getattr(res, attr)
            break
    try:
        return float(res)
    except (TypeError, ValueError):
        return float("nan")


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average ``f x f`` pixel blocks (trailing rows/columns that do not fill a block are dropped)."""
    if f <= 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    out = np.zeros((h // f, w // f) + a.shape[2:], dtype=np.float64)
    for i in range(f):
        for j in range(f):
            out += a[i:h:f, j:w:f]
    return out / (f * f)


def _background(grey: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """Global sky level and rms from ``sep`` (falls back to sigma-clipped border statistics)."""
    import sep

    h, w = grey.shape
    box = int(max(8, min(64, min(h, w) // 6)))
    try:
        bkg = sep.Background(np.ascontiguousarray(grey, dtype=np.float64), mask=masked, bw=box, bh=box,
                             fw=3, fh=3)
        level, rms = float(bkg.globalback), float(bkg.globalrms)
        if np.isfinite(level) and np.isfinite(rms):
            return level, rms
    except Exception as exc:  # noqa: BLE001 - sep refuses some images (e.g. constant ones)
        log.debug("sep background failed (%s); using border statistics", exc)
    b = max(2, min(h, w) // 10)
    border = np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])
    border = border[np.isfinite(border)]
    med = float(np.median(border))
    mad = float(np.median(np.abs(border - med))) * 1.4826
    return med, mad


def image_features(img: np.ndarray, is_raster: bool = True, max_size: int = 160,
                   detect_sigma: float = 2.0) -> dict[str, float]:
    """Image drift features of one image (``(H, W)`` or ``(H, W, 3)`` float, galaxy near the centre).

    Images larger than ``max_size`` are block-averaged for the morphology measurements (sky level
    and noise are measured at full resolution); radii are reported in original pixels.
    Pixels fainter than ``detect_sigma`` times the sky rms are ignored in the flux sums.
    Raises ``ValueError`` when no pixel is usable.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image has shape {a.shape}; expected (H, W) or (H, W, 3)")
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    bands = a if a.ndim == 3 else a[..., None]
    h, w, nb = bands.shape
    if min(h, w) < 8:
        raise ValueError(f"image is {h}x{w} px; too small for drift features")
    all_finite = bool(np.isfinite(bands).all())
    finite = np.ones((h, w), dtype=bool) if all_finite else np.isfinite(bands).all(axis=2)
    if is_raster:  # renderings: pixels saturated in every band carry no information
        lo = bands[..., 0] if nb == 1 else np.minimum(np.minimum(bands[..., 0], bands[..., 1]), bands[..., 2])
        masked = ~finite | (lo >= 1.0)
    else:  # survey data: exact zeros in every band are outside the footprint
        masked = ~finite | (np.nan_to_num(bands) == 0).all(axis=2)
    masked_fraction = float(masked.mean())
    if masked_fraction >= 0.999:
        raise ValueError(f"no usable pixels ({masked_fraction:.1%} masked)")
    if not all_finite:
        bands = np.where(finite[..., None], bands, 0.0).astype(np.float32)
    grey = (bands[..., 0] + bands[..., 1] + bands[..., 2]) / np.float32(3) if nb == 3 else bands[..., 0]
    if masked_fraction > 0:
        grey = np.where(masked, np.float32(np.median(grey[~masked])), grey)
    sky, noise = _background(grey, masked)

    f = max(1, int(math.ceil(max(h, w) / float(max_size))))
    g = _block_mean(grey, f).astype(np.float64)
    band_ds = _block_mean(bands, f).astype(np.float64) if nb == 3 else None
    gh, gw = g.shape
    noise_ds = noise / f
    src = g - sky
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64)
    rmax = 0.5 * min(gh, gw)
    # centre: flux-weighted centroid of significant pixels within the inner quarter, else the image centre
    cy, cx = (gh - 1) / 2.0, (gw - 1) / 2.0
    inner = (np.hypot(yy - cy, xx - cx) < 0.25 * min(gh, gw)) & (src > 3 * max(noise_ds, 1e-12))
    if inner.sum() >= 3:
        wts = src[inner]
        cy, cx = float((yy[inner] * wts).sum() / wts.sum()), float((xx[inner] * wts).sum() / wts.sum())
    r = np.hypot(yy - cy, xx - cx)
    inside = r < rmax
    wmap = np.where(inside & (src > detect_sigma * max(noise_ds, 1e-12)), src, 0.0)
    total = float(wmap.sum())
    out = {k: float("nan") for k in IMAGE_FEATURES}
    out.update(sky_level=sky, sky_noise=noise, masked_fraction=masked_fraction, total_flux=total * f * f)
    if total <= 0:
        return out
    rbin = np.floor(r[inside]).astype(np.int64)
    prof = np.bincount(rbin, weights=wmap[inside])
    cum = np.cumsum(prof)
    edges = np.arange(1, len(cum) + 1, dtype=np.float64)
    r50 = float(np.interp(0.5 * total, cum, edges))
    r90 = float(np.interp(0.9 * total, cum, edges))
    out.update(r50_px=r50 * f, r90_px=r90 * f, size_frac=r50 * f / w,
               concentration=r90 / r50 if r50 > 0 else float("nan"))
    ap = r < max(min(2.0 * r90, rmax), 1.5)  # generous: a circular R90 would round off elongated discs
    wm = wmap * ap
    s = wm.sum()
    if s > 0:
        dy, dx = yy - cy, xx - cx
        ixx, iyy, ixy = (wm * dx * dx).sum() / s, (wm * dy * dy).sum() / s, (wm * dx * dy).sum() / s
        tr, det = ixx + iyy, ixx * iyy - ixy * ixy
        disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
        l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 0.0)
        if l1 > 0:
            out["ellipticity"] = 1.0 - math.sqrt(l2 / l1)
    if nb == 3:
        fluxes = []
        for c in range(3):
            bc = band_ds[..., c]
            bsky = float(np.median(bc[~inside])) if (~inside).any() else float(np.median(bc))
            fluxes.append(float(np.clip(bc - bsky, 0, None)[ap].sum()))
        if fluxes[1] > 0:
            out["colour_r_g"] = fluxes[0] / fluxes[1]
            out["colour_b_g"] = fluxes[2] / fluxes[1]
    out["a1"] = _measure_a1(g, (cy, cx), r50, r90)
    return out


def drift_sample(object_ids: pd.Series, min_rows: int = 1000, n_rows: int | None = None) -> np.ndarray:
    """Boolean mask of the rows whose drift is measured: every row of a release of up to ``min_rows`` rows (0:
    always every row), else a deterministic sample by object id (the same rows on every run, in every shard and
    in every chunk) of about ``min_rows`` of them, so measuring drift costs the same time and memory whatever the
    release's size. ``n_rows``: the release's rows when ``object_ids`` is one chunk of it (default: all of it)."""
    n = len(object_ids) if n_rows is None else int(n_rows)
    if min_rows <= 0 or n <= min_rows:
        return np.ones(len(object_ids), dtype=bool)
    h = pd.util.hash_pandas_object(object_ids.astype(str), index=False).to_numpy(dtype=np.uint64)
    return (h % np.uint64(1 << 20)) < np.uint64(int(min_rows / n * (1 << 20)))


def _features_for_path(path: str, max_size: int, frame_size: int | None = None
                       ) -> tuple[dict[str, float] | None, str | None]:
    from galmorph.imaging.io import ImageError, is_fits, load_image

    try:
        img = load_image(path, allow_nan=True)
        raster = not is_fits(path)
        if frame_size and raster and img.shape[0] != frame_size:  # measured at the framing the model's cutouts have
            from galmorph.imaging.preprocess import resize

            img = np.clip(resize(img, int(frame_size)), 0, 1).astype(np.float32)
        return image_features(img, is_raster=raster, max_size=max_size), None
    except ImageError as exc:
        return None, str(exc)
    except ValueError as exc:
        return None, f"{path}: {exc}"


def _features_for_chunk(args: tuple[list[str], int, int | None]) -> list[tuple[dict | None, str | None]]:
    paths, max_size, frame_size = args
    return [_features_for_path(p, max_size, frame_size) for p in paths]


# --------------------------------------------------------------------------------------------
# catalogue, prediction and embedding features
# --------------------------------------------------------------------------------------------
def catalogue_features(df: pd.DataFrame) -> pd.DataFrame:
    """Catalogue drift features found in ``df`` (see :data:`CATALOGUE_ALIASES` and :data:`MAG_RE`).

    Returns a frame aligned with ``df`` holding ``z`` (when present) and whichever ``cat_*`` and
    ``mag_<band>`` columns have a source column; absent ones are simply not returned."""
    out = pd.DataFrame(index=df.index)
    lower = {c.lower(): c for c in df.columns}
    if "z" in df.columns:
        out["z"] = pd.to_numeric(df["z"], errors="coerce").astype("float64")
    for name, aliases in CATALOGUE_ALIASES.items():
        src = next((lower[a] for a in aliases if a in lower), None)
        if src is not None:
            out[name] = pd.to_numeric(df[src], errors="coerce").astype("float64")
    for c in df.columns:
        m = MAG_RE.match(str(c))
        if m:
            band = (m.group("b1") or m.group("b2")).lower()
            name = f"mag_{band}"
            if name not in out.columns:
                out[name] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return out


def prediction_features(predictions: pd.DataFrame) -> pd.DataFrame:
    """Prediction drift features from a scored table (``object_id, p_<class>..., pred[, p_pred]``).

    Returns ``object_id, p_<class>..., pred, confidence``; ``confidence`` is ``p_pred`` when given,
    else the largest class probability. Rows whose probabilities are missing (scoring errors) keep
    NaN probabilities and a null ``pred``."""
    if "object_id" not in predictions.columns:
        raise ValueError("predictions table has no 'object_id' column")
    dup = predictions.columns[predictions.columns.duplicated()].unique().tolist()
    if dup:  # the same column twice (e.g. a join that selected it twice): the values must agree
        for c in dup:
            block = predictions.loc[:, predictions.columns == c]
            if not block.T.drop_duplicates().shape[0] == 1:
                raise ValueError(f"predictions table has column {c!r} {block.shape[1]} times with different values")
        predictions = predictions.loc[:, ~predictions.columns.duplicated()]
    pcols = [c for c in predictions.columns if c.startswith("p_") and c != "p_pred"]
    if not pcols:
        raise ValueError("predictions table has no class-probability columns (p_<class>)")
    out = pd.DataFrame({"object_id": predictions["object_id"].astype(str)})
    probs = predictions[pcols].apply(pd.to_numeric, errors="coerce").astype("float64")
    for c in pcols:
        out[c] = probs[c].to_numpy()
    ok = probs.notna().all(axis=1).to_numpy()
    if "pred" in predictions.columns:
        pred = predictions["pred"].astype("object").where(ok, None)
    else:
        pred = pd.Series(np.where(ok, probs.fillna(-1).idxmax(axis=1).str[2:], None), index=predictions.index)
    out["pred"] = pd.Series(pred.to_numpy(), dtype="object").astype("string").to_numpy()
    conf = predictions["p_pred"] if "p_pred" in predictions.columns else probs.max(axis=1, skipna=False)
    out["confidence"] = pd.to_numeric(conf, errors="coerce").astype("float64").to_numpy()
    if out["object_id"].duplicated().any():
        dup = out.loc[out["object_id"].duplicated(), "object_id"].iloc[0]
        raise ValueError(f"predictions table has duplicate object_id {dup!r}")
    return out


def embedding_pca_features(object_ids: Sequence[Any], embeddings: np.ndarray, n_components: int = 8,
                           pca: Any | None = None, seed: int = 0) -> tuple[pd.DataFrame, Any]:
    """Reduce an encoder embedding matrix ``(N, D)`` to ``emb_pc1..k`` columns by PCA.

    Pass the ``pca`` returned for the reference set when transforming the current set, so both are
    projected on the same axes. Returns ``(frame with object_id + emb_pc*, fitted PCA)``."""
    from sklearn.decomposition import PCA

    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(object_ids):
        raise ValueError(f"embeddings must be (N, D) with N = {len(object_ids)} object ids; got {emb.shape}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"embedding of object {list(object_ids)[int(np.argmax(bad))]!r} has non-finite values")
    if pca is None:
        k = int(min(n_components, emb.shape[0], emb.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(emb)
    z = pca.transform(emb)
    out = pd.DataFrame(z, columns=[f"emb_pc{i + 1}" for i in range(z.shape[1])])
    out.insert(0, "object_id", [str(o) for o in object_ids])
    return out, pca


# --------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------
def feature_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(numerical, categorical)`` drift feature columns of a features frame (keys excluded)."""
    known_num = set(IMAGE_FEATURES) | set(CATALOGUE_ALIASES) | {"z", "confidence"}
    num, cat = [], []
    for c in df.columns:
        if c in KEY_COLUMNS:
            continue
        if c in known_num or c.startswith(("mag_", "emb_pc")) or (c.startswith("p_") and c != "p_pred"):
            num.append(c)
        elif c == "pred":
            cat.append(c)
    return num, cat


def compute_drift_features(manifest_df: pd.DataFrame, data_root: Path | str | None = None,
                           predictions: pd.DataFrame | None = None, num_workers: int = 0,
                           image_features_enabled: bool = True, max_size: int = 160,
                           progress: bool = True, frame_size: int | None = None) -> DriftFeatures:
    """Drift features for every row of a manifest (keyed by ``object_id``).

    * catalogue features come from the manifest's own columns;
    * image features are measured when the row has an ``image_uri`` (``data://`` resolved under
      ``data_root``); catalogue-only manifests (empty URIs) give catalogue features only;
    * ``predictions`` (``object_id, p_<class>..., pred[, p_pred]``, e.g. from
      :func:`galmorph.scoring.inference.predict_manifest`) are merged by ``object_id``; without it,
      probability columns already in the manifest (a scored table) are used.

    Rows whose image cannot be read, or whose ``object_id`` is missing or repeated, go to the
    quarantine with the reason; every input row is in exactly one of the two outputs.
    ``num_workers > 0`` measures images in that many processes. ``frame_size``: raster images are resized
    to this side before they are measured (a release whose rows kept their source images is measured at the
    framing its cutouts would have had, as the reference's were).
    """
    if "object_id" not in manifest_df.columns:
        raise ManifestError("manifest has no 'object_id' column")
    df = manifest_df.reset_index(drop=True)
    oid = df["object_id"].astype("string")
    q: list[dict] = []
    keep = np.ones(len(df), dtype=bool)
    missing = oid.isna() | (oid.str.strip() == "")
    for i in np.flatnonzero(missing.to_numpy()):
        q.append(quarantine_record(None, STAGE, f"row {i}: missing object_id", df.iloc[i]))
    keep &= ~missing.to_numpy()
    dup = oid.duplicated(keep="first").to_numpy() & keep
    for i in np.flatnonzero(dup):
        q.append(quarantine_record(oid.iat[i], STAGE, f"object {oid.iat[i]}: duplicate object_id", df.iloc[i]))
    keep &= ~dup

    out = pd.DataFrame({"object_id": oid.astype(str)})
    out["survey"] = df["survey"].astype("string") if "survey" in df.columns else pd.Series(
        ["unknown"] * len(df), dtype="string")
    if "z_bin" in df.columns:
        out["z_bin"] = df["z_bin"].astype("string")
    elif "z" in df.columns:
        out["z_bin"] = assign_z_bin(pd.to_numeric(df["z"], errors="coerce")).to_numpy()
    else:
        out["z_bin"] = pd.Series(["unknown"] * len(df), dtype="string")
    out["survey"] = out["survey"].fillna("unknown")
    out["z_bin"] = out["z_bin"].fillna("unknown")
    out = pd.concat([out, catalogue_features(df).reset_index(drop=True)], axis=1)

    uris = df["image_uri"] if "image_uri" in df.columns else pd.Series([None] * len(df))
    has_uri = uris.notna().to_numpy() & (uris.astype("string").fillna("").str.strip() != "").to_numpy()
    todo = np.flatnonzero(keep & has_uri) if image_features_enabled else np.array([], dtype=int)
    if len(todo):
        paths: list[str | None] = []
        for i in todo:
            try:
                paths.append(str(resolve_image_uri(str(uris.iat[i]), data_root)))
            except ManifestError as exc:
                paths.append(None)
                q.append(quarantine_record(oid.iat[i], STAGE, f"object {oid.iat[i]}: {exc}", df.iloc[i]))
                keep[i] = False
        valid = [(i, p) for i, p in zip(todo, paths, strict=True) if p is not None]
        results = _measure_all([p for _, p in valid], num_workers, max_size, progress, frame_size)
        feats = np.full((len(df), len(IMAGE_FEATURES)), np.nan)
        for (i, _), (res, err) in zip(valid, results, strict=True):
            if err is not None:
                q.append(quarantine_record(oid.iat[i], STAGE, f"object {oid.iat[i]}: {err}", df.iloc[i]))
                keep[i] = False
            else:
                feats[i] = [res[k] for k in IMAGE_FEATURES]
        img_df = pd.DataFrame(feats, columns=list(IMAGE_FEATURES))
        if _a1_function() is None:
            img_df = img_df.drop(columns=["a1"])
        out = pd.concat([out, img_df], axis=1)

    pred_src = predictions
    if pred_src is None and "pred" in df.columns and any(c.startswith("p_") and c != "p_pred" for c in df.columns):
        pred_src = df
    if pred_src is not None:
        pf = prediction_features(pred_src)
        out = out.merge(pf, on="object_id", how="left", validate="many_to_one")
    features = out[keep].reset_index(drop=True)
    qdf = quarantine_frame(q)
    log.info("drift features: %d rows in, %d out, %d quarantined", len(df), len(features), len(qdf))
    return DriftFeatures(features, qdf)


def _measure_all(paths: list[str], num_workers: int, max_size: int, progress: bool,
                 frame_size: int | None = None) -> list[tuple]:
    from tqdm.auto import tqdm

    if num_workers and num_workers > 0 and len(paths) > 16:
        size = max(8, len(paths) // (num_workers * 4))
        chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
        res: list[tuple] = []
        with ProcessPoolExecutor(max_workers=num_workers) as ex:
            for part in tqdm(ex.map(_features_for_chunk, [(c, max_size, frame_size) for c in chunks]), total=len(chunks),
                             desc="drift features", unit="chunk", disable=not progress):
                res.extend(part)
        return res
    return [_features_for_path(p, max_size, frame_size)
            for p in tqdm(paths, desc="drift features", unit="img", disable=not progress)]
