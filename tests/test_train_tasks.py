"""Tiny presets of the other tasks and architectures through the full training path (real MLflow):
arms EfficientNet-B0 with a class merge via the CLI, chirality CE and G-ResNet models that keep their
symmetry after pt2 export and registration. (Lopsided Zoobot trials: test_train_lopsided.py.)"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner

from galmorph.catalogue.manifest import read_manifest
from galmorph.models.io import load_for_inference
from galmorph.training import train


def test_arms_cli_with_merge_registers_merged_classes(mlflow_server, sim_arms, tmp_path):
    from galmorph.cli.base import main

    r = CliRunner().invoke(main, ["train", "--task", "arms", "--preset", "tiny", "--manifest",
                                  str(sim_arms["manifest"]), "--set", "arm_merge=3+4", "--set", "progress=false",
                                  "--tracking-uri", mlflow_server, "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    text = r.stdout
    payload = json.loads(text[text.index("{\n"):])
    assert payload["registered_name"] == "galmorph-arms"
    # the drift reference a rescoring run of this version monitors against, logged as the pipeline's train step does
    from galmorph.drift.reference import fetch_drift_reference

    ref = fetch_drift_reference(payload["model_uri"], tmp_path / "ref")
    assert payload["drift_reference"] and len(pd.read_parquet(ref)) == len(read_manifest(sim_arms["manifest"]))
    lm = load_for_inference(payload["model_uri"])
    assert lm.spec.classes == ["1", "2", "3+4", "5+"]
    assert lm.predict_proba(torch.rand(3, 3, 64, 64)).shape == (3, 4)
    bad = CliRunner().invoke(main, ["train", "--task", "arms", "--manifest", str(sim_arms["manifest"]),
                                    "--set", "arm_merge=2+3"])
    assert bad.exit_code != 0 and "arm_merge must be one of" in bad.output


def test_chirality_ce_model_stays_equivariant_after_registration(mlflow_server, sim_chirality, tmp_path):
    res = train("chirality", "tiny_ce", {"progress": False, "max_epochs": 1, "image_size": 32},
                manifest=sim_chirality["manifest"], tracking_uri=mlflow_server, out_dir=tmp_path)
    lm = load_for_inference(res.model_uri)
    assert lm.spec.chirality_equivariant
    x = torch.rand(6, 3, 32, 32)
    z, zm = lm.predict_logits(x), lm.predict_logits(torch.flip(x, dims=[3]))
    assert torch.equal(z[:, [1, 0, 2]], zm)  # a mirrored batch swaps the CW and ACW columns exactly
    p, pm = lm.predict_proba(x), lm.predict_proba(torch.flip(x, dims=[3]))
    assert np.array_equal(p[:, 0], pm[:, 1])  # P_CW(x) = P_ACW(mirror x)


def test_gresnet_registered_model_is_rotation_invariant(mlflow_server, sim_chirality, tmp_path):
    res = train("chirality", "tiny_gresnet", {"progress": False}, manifest=sim_chirality["manifest"],
                tracking_uri=mlflow_server, out_dir=tmp_path)
    module = mlflow.pytorch.load_model(res.model_uri)
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        y = module(x)
        for k in (1, 2, 3):
            assert torch.allclose(y, module(torch.rot90(x, k, dims=[2, 3])), atol=1e-4)
