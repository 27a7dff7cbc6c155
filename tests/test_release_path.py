"""The decode-once release path (galmorph.scoring.release_path) gives the catalogue and the quarantine of
validate-then-score, with one decode per image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_scoring_helpers import TinyNet, add_broken_images, count_decodes


@pytest.fixture()
def release(sim_chirality, tmp_path):
    """The simulated release + a zero-byte and a truncated JPEG, a blank image (decodes, fails the
    blank check) and a row outside the redshift selection (fails a table check)."""
    from galmorph.imaging.io import save_raster
    from galmorph.catalogue.manifest import read_manifest, write_manifest

    man, _ = add_broken_images(sim_chirality["manifest"], tmp_path / "m1.parquet", tmp_path)
    df = read_manifest(man)
    blank = tmp_path / "blank.png"
    save_raster(np.full((64, 64), 0.3), blank)
    extra = df.iloc[:2].copy()
    extra["object_id"] = ["blank-image", "z-outside"]
    extra["image_uri"] = [str(blank), df["image_uri"].iloc[3]]
    extra["z"] = [0.05, 0.9]
    df = pd.concat([df, extra], ignore_index=True)
    df.loc[df["object_id"] != "z-outside", "z"] = df.loc[df["object_id"] != "z-outside", "z"].fillna(0.05).clip(0.01, 0.2)
    return write_manifest(df, tmp_path / "release.parquet", kind="release")


def _loaded():
    import torch

    from galmorph.models.io import LoadedModel, ModelSpec

    net = TinyNet(3, seed=7).eval()
    gm = torch.export.export(net, (torch.rand(2, 3, 32, 32),),
                             dynamic_shapes=({0: torch.export.Dim("b", min=1, max=4096)},)).module()
    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="TinyNet", image_size=32)
    return LoadedModel(module=gm, spec=spec, uri="test:tiny", version="1")


def test_decode_once_equals_validate_then_score(release, tmp_path, monkeypatch):
    import galmorph.catalogue.validation as validation
    from galmorph.scoring.release_path import score_release
    from galmorph.scoring.batch import merge_scores, score_manifest
    from galmorph.catalogue.validation import ValidationConfig, validate_manifest

    cfg = ValidationConfig(z_min=0.01, z_max=0.2, max_failure_fraction=0.5)
    lm = _loaded()
    # reference: validate (decodes every image), then score the passed rows (decodes them again)
    v = validate_manifest(release, cfg, out_manifest=tmp_path / "passed.parquet", log_to_mlflow=False,
                          progress=False)
    score_manifest(lm, tmp_path / "passed.parquet", tmp_path / "ref", batch_size=8, shard_size=16, progress=False)
    ref = merge_scores([tmp_path / "ref"], tmp_path / "ref")
    ref_q = set(v.quarantine["object_id"]) | set(pd.read_parquet(ref.quarantine)["object_id"])

    # decode once: count the decodes
    calls = count_decodes(monkeypatch)
    monkeypatch.setattr(validation, "check_image", lambda *a, **k: pytest.fail("image decoded by validation"))
    res = score_release(release, lm, tmp_path / "once", cfg, batch_size=8, shard_size=16, progress=False)
    n_rows = len(pd.read_parquet(release))
    assert len(calls) == n_rows - 1  # every row but the one failing a table check, once
    assert len(set(calls)) <= len(calls)
    assert res.n_rows == n_rows and res.n_scored + res.n_quarantined_validate + res.n_quarantined_score == n_rows

    a = pd.read_parquet(ref.catalogue).sort_values("object_id").reset_index(drop=True)
    b = pd.read_parquet(res.catalogue).sort_values("object_id").reset_index(drop=True)
    assert list(a["object_id"]) == list(b["object_id"])
    for c in ("p_CW", "p_ACW", "p_other"):
        np.testing.assert_allclose(a[c], b[c], atol=1e-6)
    assert (a["pred"] == b["pred"]).all()

    q = pd.read_parquet(res.quarantine)
    assert set(q["object_id"]) == ref_q == {"broken-zero", "broken-truncated", "blank-image", "z-outside"}
    reason = dict(zip(q["object_id"], q["reason"]))
    ref_reason = dict(zip(v.quarantine["object_id"], v.quarantine["reason"]))
    assert "blank image" in reason["blank-image"] and ref_reason["blank-image"] in reason["blank-image"]
    assert "z=" in reason["z-outside"]
    assert res.success and res.failure_fraction == pytest.approx(4 / n_rows)


def test_the_failure_gate_spans_both_stages(release, tmp_path):
    from galmorph.scoring.release_path import score_release
    from galmorph.catalogue.validation import ValidationConfig

    cfg = ValidationConfig(z_min=0.01, z_max=0.2, max_failure_fraction=0.05)  # 4 of 52 rows fail: 7.7 %
    res = score_release(release, _loaded(), tmp_path / "r", cfg, batch_size=8, progress=False)
    assert not res.success and res.failure_fraction > 0.05
