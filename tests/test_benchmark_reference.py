"""``benchmarks/reference.py --from-predictions`` (#12.8): the chirality blocks of the committed results are
recomputed from the per-galaxy probabilities they saved, without training, and come out the same; the
network + winding combination is the library's ensemble with its defaults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCH / "results"
SPLIT = 1002


def _one_case(tmp_path: Path) -> tuple[Path, dict]:
    res = json.loads((RESULTS / "reference.json").read_text())
    case = next(c for c in res["cases"] if c["task"] == "chirality" and c["weights"] == "pretrained"
                and int(c["split"]) == SPLIT)
    out = tmp_path / "out"
    (out / "reference_predictions").mkdir(parents=True)
    res["cases"] = [json.loads(json.dumps(case))]
    # what the recomputation must produce again: drop it from the input so a no-op cannot pass
    res["cases"][0]["chirality"] = {}
    (out / "reference.json").write_text(json.dumps(res))
    shutil.copy(RESULTS / "reference_predictions" / f"chirality_pretrained_{SPLIT}.parquet",
                out / "reference_predictions")
    return out, case


def _run(out: Path, data_root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "reference.py", "--resume", "--from-predictions", "--tasks", "chirality",
                           "--out", str(out), "--data-root", str(data_root)],
                          cwd=BENCH, capture_output=True, text=True, timeout=600)


def test_from_predictions_reproduces_the_committed_chirality_block(tmp_path, data_root):
    from galmorph.ensemble import DEFAULT_MIN_CONFIDENCE, DEFAULT_WEIGHT

    out, case = _one_case(tmp_path)
    proc = _run(out, data_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((out / "reference.json").read_text())
    block = new["cases"][0]["chirality"]
    old = case["chirality"]
    for k in ("three_class_accuracy", "majority_accuracy", "cw_acw_accuracy", "cw_acw_accuracy_top80", "n_spirals"):
        assert block[k] == pytest.approx(old[k], abs=1e-12), k
    assert block["prior_adjusted"]["three_class_accuracy"] == pytest.approx(
        old["prior_adjusted"]["three_class_accuracy"], abs=1e-12)
    held = block["winding_held_out"]
    assert held["ensemble"]["weight"] == DEFAULT_WEIGHT and held["ensemble"]["min_confidence"] == DEFAULT_MIN_CONFIDENCE
    for meth in ("network", "winding", "combined"):
        assert held[meth] == pytest.approx(old["winding_held_out"][meth], abs=1e-12), meth
    # the training figures are kept; the md names the recomputation
    assert new["cases"][0]["train_minutes"] == case["train_minutes"]
    md = (out / "reference.md").read_text()
    assert "recomputed from the saved predictions" in md and f"weight {DEFAULT_WEIGHT:g}" in md


def test_from_predictions_refuses_predictions_that_do_not_match_the_split(tmp_path, data_root):
    out, _case = _one_case(tmp_path)
    f = out / "reference_predictions" / f"chirality_pretrained_{SPLIT}.parquet"
    pd.read_parquet(f).iloc[:-3].to_parquet(f)
    proc = _run(out, data_root)
    assert proc.returncode != 0
    assert f"chirality_pretrained_{SPLIT}.parquet" in proc.stderr and "match the rebuilt split" in proc.stderr


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        import importlib

        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_set_overrides_are_typed_like_the_training_config_and_unknown_keys_refused():
    ref = _bench_module("reference")
    got = ref.preset_overrides(["crop_fraction=0.30", "image_size=160", "mirror_swap=false", "monitor=val_loss"])
    assert got == {"crop_fraction": 0.30, "image_size": 160, "mirror_swap": False, "monitor": "val_loss"}
    assert isinstance(got["image_size"], int) and isinstance(got["crop_fraction"], float)
    from galmorph.training import resolve_config

    cfg = resolve_config("chirality", "reference", got)  # the training layer takes them as they are
    assert (cfg.crop_fraction, cfg.image_size, cfg.mirror_swap) == (0.30, 160, False)
    for bad in ("crop_fractoin=0.3", "crop_fraction"):
        with pytest.raises(SystemExit, match="--set"):
            ref.preset_overrides([bad])


def test_arms_ceiling_counts_classes_without_training_examples_as_zero():
    probe = _bench_module("arms_probe")
    # 'x' has one galaxy: split_frame always puts it in the test quarter, so no classifier can learn it
    df = pd.DataFrame({"label": ["a"] * 40 + ["b"] * 40 + ["x"]})
    ce = probe.ceiling(df, range(3), ["a", "b", "x"])
    assert ce == [pytest.approx(2 / 3)] * 3
    df2 = pd.DataFrame({"label": ["a"] * 40 + ["b"] * 40 + ["x"] * 8})
    assert probe.ceiling(df2, range(3), ["a", "b", "x"]) == [1.0] * 3
