"""Active learning: a queue ranked by the entropy of a registered champion model.

Uses a real MLflow tracking store + model registry (sqlite, in a temporary folder) rather than the
shared server fixture, whose start-up can exceed its timeout on a heavily loaded 2-core machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow


def _tiny_model():
    import torch
    from torch import nn

    class Tiny(nn.Module):
        """Logits from the mean brightness: uncertain (near 50/50) for mid-grey images."""

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            with torch.no_grad():
                self.lin.weight.copy_(torch.tensor([[8.0, 8.0, 8.0], [-8.0, -8.0, -8.0]]))
                self.lin.bias.copy_(torch.tensor([-2.0, 2.0]))

        def forward(self, x):
            return self.lin(x.mean(dim=(2, 3)))

    return Tiny()


@pytest.fixture()
def tracking_uri(tmp_path):
    import mlflow

    import os

    import mlflow.tracking._model_registry.utils as registry_utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = mlflow.get_tracking_uri()
    # set_registry_uri also exports MLFLOW_REGISTRY_URI: restore both exactly, or later tests would
    # register models in this temporary registry
    old_registry, old_env = registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(old)
    registry_utils._registry_uri = old_registry
    if old_env is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    else:
        os.environ["MLFLOW_REGISTRY_URI"] = old_env


def test_rank_by_uncertainty_with_champion(tmp_path, tracking_uri, sim_lopsided):
    import mlflow

    from galmorph.cli import main
    from galmorph.labelling.queue import predictive_entropy, read_queue
    from galmorph.catalogue.manifest import read_manifest, write_manifest
    from galmorph.models.io import ModelSpec, log_model

    spec = ModelSpec(task="lopsided", classes=["symmetric", "lopsided"], arch="tiny", image_size=32, in_chans=3)
    exp = mlflow.create_experiment("label-active-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_model(_tiny_model(), spec, registered_model_name="galmorph-lopsided")
    mlflow.MlflowClient().set_registered_model_alias("galmorph-lopsided", "champion", info.registered_model_version)

    man = read_manifest(sim_lopsided["manifest"])
    man["label"] = None
    src = write_manifest(man, tmp_path / "m.parquet", kind="test")
    out = tmp_path / "q.parquet"
    res = CliRunner().invoke(main, ["label", "sample", "--manifest", str(src), "--out", str(out), "--per-bin", "3",
                                    "--rank-by-uncertainty", "--no-measure-a1", "--tracking-uri", tracking_uri])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["ranked_by"] == "entropy" and summary["model_uri"] == "models:/galmorph-lopsided@champion"
    q = read_queue(out)
    assert q["entropy"].notna().all() and q["entropy"].is_monotonic_decreasing
    assert np.allclose(q["entropy"], predictive_entropy(q[["p_symmetric", "p_lopsided"]].to_numpy()))
    # each bin holds its most uncertain objects
    from galmorph.labelling.queue import assign_queue_bins, score_entropy, z_bin_edges

    scores = score_entropy(man, "models:/galmorph-lopsided@champion")
    scores["queue_bin"] = assign_queue_bins(man.set_index("object_id").z.loc[scores.object_id].reset_index(drop=True),
                                            z_bin_edges())
    for b, g in q.groupby("queue_bin"):
        pool = scores[scores.queue_bin == b]
        assert set(g.object_id) == set(pool.nlargest(len(g), "entropy").object_id)
    missing = CliRunner().invoke(main, ["label", "sample", "--manifest", str(src), "--out", str(tmp_path / "x.parquet"),
                                        "--rank-by-uncertainty", "--model-uri", "models:/no-such-model@champion",
                                        "--tracking-uri", tracking_uri])
    assert missing.exit_code == 1 and "cannot score with models:/no-such-model@champion" in missing.output
