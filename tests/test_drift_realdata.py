"""Drift on real sky: SDSS (GZ1 + GZ2 renderings) against DESI Legacy Survey (DECaLS) images, a
false-alarm check on two random halves of the same SDSS set, and per-redshift-bin verdicts over
the Hart et al. (2017) spiral catalogue."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.drift import DRIFT, INSUFFICIENT, NO_DRIFT, DriftConfig, compute_drift_features, run_drift
from galmorph.drift.samples import real_manifest


@pytest.fixture()
def tmp_path():
    """A private temporary folder (pytest's basetemp is pruned by concurrent pytest runs)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-drift-") as d:
        yield Path(d)


pytestmark = pytest.mark.realdata

N_GZ1, N_GZ2, N_DECALS = 160, 80, 160


@pytest.fixture(scope="module")
def sdss_features(data_root):
    """Image drift features of 240 SDSS galaxies: 160 GZ1 colour JPEGs + 80 GZ2 r-band renderings."""
    man = pd.concat([real_manifest("gz1_chirality", data_root).sample(N_GZ1, random_state=7),
                     real_manifest("gz2_arms", data_root).sample(N_GZ2, random_state=7)], ignore_index=True)
    res = compute_drift_features(man, data_root=data_root, progress=False)
    assert len(res.features) + len(res.quarantine) == len(man)
    return res.features


@pytest.fixture(scope="module")
def decals_features(data_root):
    man = real_manifest("decals", data_root).sample(N_DECALS, random_state=7)
    res = compute_drift_features(man, data_root=data_root, progress=False)
    assert len(res.features) + len(res.quarantine) == len(man)
    return res.features


def test_sdss_vs_decals_survey_drift_on_image_features(sdss_features, decals_features, tmp_path, artifacts_dir):
    res = run_drift(sdss_features, decals_features, by=["survey"], out_dir=tmp_path / "survey",
                    release="decals-sample", config=DriftConfig())
    assert res.verdict == DRIFT
    overall, decals = res.per_group["overall"], res.per_group["survey=decals"]
    assert overall.verdict == DRIFT and decals.verdict == DRIFT
    assert decals.reference_scope == "all"  # the SDSS reference has no DECaLS rows
    # the survey change is in the image features: sky, noise and the colour balance of the renderings
    assert {"sky_level", "sky_noise", "colour_r_g", "colour_b_g"} <= set(decals.drifted_columns)
    assert decals.drift_share >= 0.5
    assert all(c not in decals.drifted_columns for c in ("z",))  # no redshifts in either set
    (artifacts_dir / "drift_sdss_vs_decals.md").write_text(res.table() + "\n")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sdss_random_halves_raise_no_false_alarm(sdss_features, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(sdss_features))
    half = len(idx) // 2
    a, b = sdss_features.iloc[idx[:half]], sdss_features.iloc[idx[half:]]
    res = run_drift(a, b, by=["survey"] if seed == 0 else [], config=DriftConfig())
    assert res.verdict == NO_DRIFT, res.table()
    for g in res.per_group.values():
        assert g.verdict == NO_DRIFT
        # per-column tests at p < 0.05 on ~12 columns: a couple of chance hits at most
        assert g.drift_share < 0.3, res.table()


@pytest.fixture(scope="module")
def hart_features(data_root):
    man = real_manifest("hart", data_root).sample(2400, random_state=11)
    res = compute_drift_features(man, progress=False)
    assert len(res.quarantine) == 0
    assert {"z", "cat_petro_theta", "cat_axis_ratio", "cat_log_mstar"} <= set(res.features.columns)
    return res.features


def test_hart_catalogue_one_verdict_per_redshift_bin(hart_features, tmp_path):
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(hart_features))
    ref = hart_features.iloc[idx[: len(idx) // 2]]
    cur = hart_features.iloc[idx[len(idx) // 2:]]
    cfg = DriftConfig(min_group_size=30)
    same = run_drift(ref, cur, by=["z_bin"], config=cfg, out_dir=tmp_path / "halves")
    bins = set(cur["z_bin"].astype(str))
    assert {k for k in same.per_group if k.startswith("z_bin=")} == {f"z_bin={b}" for b in bins}
    summary = json.loads((tmp_path / "halves" / "summary.json").read_text())
    assert len([g for g in summary["groups"] if g["group_by"] == "z_bin"]) == len(bins)
    assert same.verdict == NO_DRIFT, same.table()
    big = [g for g in same.per_group.values() if g.group_by == "z_bin" and g.n_current >= cfg.min_group_size]
    assert len(big) >= 3 and all(g.verdict == NO_DRIFT for g in big)
    tiny = [g for g in same.per_group.values() if g.group_by == "z_bin" and g.n_current < cfg.min_group_size]
    assert all(g.verdict == INSUFFICIENT for g in tiny)

    # a systematic catalogue change (stellar masses +0.3 dex, Petrosian radii x1.3: another pipeline)
    shifted = cur.assign(cat_log_mstar=cur["cat_log_mstar"] + 0.3, cat_petro_theta=cur["cat_petro_theta"] * 1.3)
    moved = run_drift(ref, shifted, by=["z_bin"], config=cfg)
    assert moved.verdict == DRIFT
    for g in moved.per_group.values():
        if g.group_by == "z_bin" and g.verdict != INSUFFICIENT and "cat_log_mstar" in g.column_scores:
            assert g.verdict == DRIFT, moved.table()
            assert {"cat_log_mstar", "cat_petro_theta"} <= set(g.drifted_columns)
            assert "cat_axis_ratio" not in g.drifted_columns  # untouched column
