"""Any timm model name is an architecture (#29): ``galmorph train --set arch=<timm name>`` trains a model
the project never listed (random init, recorded as such, nothing downloaded) that loads for inference;
an unknown name fails with close timm names."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import torch
from click.testing import CliRunner

from galmorph.models.io import load_for_inference


def test_cli_trains_an_unlisted_timm_arch_that_loads_for_inference(mlflow_server, sim_chirality, tmp_path):
    from galmorph.cli.base import main

    r = CliRunner().invoke(main, ["train", "--task", "chirality", "--preset", "tiny", "--manifest",
                                  str(sim_chirality["manifest"]), "--set", "arch=mobilenetv3_small_050",
                                  "--set", "max_epochs=1", "--set", "progress=false",
                                  "--tracking-uri", mlflow_server, "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout[r.stdout.index("{\n"):])
    lm = load_for_inference(payload["model_uri"])
    assert lm.spec.arch == "mobilenetv3_small_050" and lm.spec.classes == ["CW", "ACW", "other"]
    assert lm.spec.encoder_init == "random"  # no packaged weights for it: random start, recorded
    p = lm.predict_proba(torch.rand(4, 3, 32, 32))
    assert p.shape == (4, 3) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    run = mlflow.MlflowClient(mlflow_server).get_run(payload["run_id"])
    assert run.data.params["arch"] == "mobilenetv3_small_050" and run.data.params["encoder_init"] == "random"
    assert "never downloaded" in run.data.tags["encoder_init_note"]


def test_cli_unknown_arch_names_it_and_suggests_close_timm_names(sim_chirality):
    from galmorph.cli.base import main

    bad = CliRunner().invoke(main, ["train", "--task", "chirality", "--manifest", str(sim_chirality["manifest"]),
                                    "--set", "arch=mobilenetv3_smal_050", "--show-config"])
    assert bad.exit_code != 0
    assert "unknown arch 'mobilenetv3_smal_050'" in bad.output and "mobilenetv3_small_050" in bad.output
