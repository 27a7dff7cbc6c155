"""Smoke tests of the shared foundation: CLI help, model I/O round trip through a real MLflow server."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from galmorph.cli import main


def test_cli_help_lists_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("stack", "simulate", "settings"):
        assert cmd in res.output


def test_model_roundtrip_pt2_dynamic_batch(mlflow_server):
    import mlflow

    from galmorph.models.io import ModelSpec, load_for_inference, log_model

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3)).eval()
    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="tiny", image_size=32)
    mlflow.set_experiment("smoke")
    with mlflow.start_run():
        info = log_model(net, spec, registered_model_name="galmorph-smoke")
    lm = load_for_inference(f"models:/galmorph-smoke/{info.registered_model_version}")
    x = torch.rand(7, 3, 32, 32)
    np.testing.assert_allclose(lm.predict_logits(x).numpy(), net(x).detach().numpy(), atol=1e-5)
    assert lm.spec.classes == ["CW", "ACW", "other"] and lm.version == str(info.registered_model_version)
    assert lm.predict_proba(x).sum(axis=1) == pytest.approx(np.ones(7), abs=1e-5)
