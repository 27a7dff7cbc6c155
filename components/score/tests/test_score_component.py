"""score (two parallel work items) -> merge, called as python functions, against the real MLflow server:
the merged catalogue equals one uninterrupted scoring run, and the scored release is an MLflow run."""

import json

import pandas as pd
from kfp.dsl import Dataset, Metrics

from galmorph.scoring.batch import plan_work, score_manifest
from galmorph_components.merge.component import merge
from galmorph_components.score.component import score
from galmorph_components.shard.component import shard
from test_scoring_helpers import TinyNet, register_model


def test_score_work_items_then_merge(sim_chirality, mlflow_server, tmp_path):
    import mlflow

    uri = register_model(TinyNet(3, seed=4), "chirality", ["CW", "ACW", "other"], "galmorph-test-component-score")
    ds = Dataset(name="d", uri=str(sim_chirality["manifest"]), metadata={})
    work = shard.python_func(dataset=ds, model_uri=uri, shard_size=10, n_workers=2)
    outs = []
    for i, item in enumerate(work):
        out = Dataset(name=f"s{i}", uri=str(tmp_path / f"scores{i}"), metadata={})
        r = score.python_func(dataset=ds, work=item, scores=out, batch_size=8, num_workers=0, device="cpu",
                              tracking_uri=mlflow_server)
        assert r.n_quarantined == 0
        outs.append(out)
    cat = Dataset(name="c", uri=str(tmp_path / "catalogue"), metadata={})
    m = merge.python_func(scores=outs, catalogue=cat, metrics=Metrics(name="m", uri=str(tmp_path / "m"), metadata={}),
                          release="component-test", tracking_uri=mlflow_server)
    assert m.n_scored == 48 and m.n_quarantined == 0
    merged = pd.read_parquet(tmp_path / "catalogue" / "catalogue.parquet")
    ref_dir = tmp_path / "reference"
    score_manifest(uri, sim_chirality["manifest"], ref_dir, batch_size=8, shard_size=10, progress=False)
    ref = pd.concat([pd.read_parquet(p) for p in sorted((ref_dir / "shards").glob("part-*.parquet"))])
    assert merged["object_id"].tolist() == ref["object_id"].tolist()
    assert (merged["pred"].to_numpy() == ref["pred"].to_numpy()).all()
    run = mlflow.MlflowClient().get_run(m.run_id)
    assert run.data.tags["galmorph.release"] == "component-test" and run.data.metrics["n_scored"] == 48
    assert json.loads((tmp_path / "catalogue" / "summary.json").read_text())["duplicate_object_ids"] == 0
