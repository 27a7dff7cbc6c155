"""Small leftovers of #15/#17: --set overrides typed by the config's pydantic model, one macro-F1,
η-ranked label queues, test-time views at scoring, the configurable pixel limit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.training.config import ConfigError, config_from_yaml, config_to_yaml, parse_set_items, resolve_config


def test_set_overrides_typed_by_the_config_model():
    assert parse_set_items(["lr=1e-4", "max_epochs= 7", "flips=off", "arch=resnet18"]) == {
        "lr": 1e-4, "max_epochs": 7, "flips": False, "arch": "resnet18"}
    # every bad key named with the type it expects, in one error
    with pytest.raises(ConfigError) as err:
        parse_set_items(["lr=fast", "patience=2.5"])
    assert "'lr' expects a number" in str(err.value) and "'patience' expects an integer" in str(err.value)
    # a Python bool is not a number
    with pytest.raises(ConfigError, match="'trials' expects an integer, got True"):
        resolve_config("chirality", "tiny", {"trials": True})
    cfg = resolve_config("chirality", "tiny", {"lr": 1, "seed": "3"})
    assert isinstance(cfg.lr, float) and cfg.seed == 3
    assert config_from_yaml(config_to_yaml(cfg)) == cfg


def test_training_macro_f1_is_the_evaluation_definition():
    from sklearn.metrics import f1_score

    from galmorph.evaluation.metrics import macro_f1
    from galmorph.training.metrics import classification_metrics

    rng = np.random.default_rng(0)
    classes = ["1", "2", "3", "4+"]  # names that look like indices: the labels must not be confused
    y_true = rng.integers(0, 3, 60)  # class "4+" absent
    y_pred = rng.integers(0, 4, 60)
    m, report = classification_metrics(y_true, y_pred, classes)
    ref = f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert m["test_f1_macro"] == pytest.approx(ref)
    assert report["absent_classes"] == ["4+"]
    names = [classes[i] for i in y_true], [classes[i] for i in y_pred]
    assert m["test_f1_macro"] == macro_f1(*names, classes)[0]
    # the absent class is left out, not averaged in as F1 = 0
    assert m["test_f1_macro"] != pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2, 3], average="macro",
                                                        zero_division=0))


@pytest.fixture
def restore_image_limit():
    from galmorph.imaging import io

    yield
    io.set_max_image_pixels(io.MAX_IMAGE_PIXELS)


def test_max_image_pixels_from_the_environment_via_the_cli(tmp_path, monkeypatch, restore_image_limit):
    from click.testing import CliRunner
    from PIL import Image

    from galmorph.cli import main
    from galmorph.imaging.io import MAX_IMAGE_PIXELS, ImageError, load_image, max_image_pixels

    yy, xx = np.mgrid[:64, :64]
    disc = (255 * np.exp(-((xx - 32.0) ** 2 + (yy - 32.0) ** 2) / 60.0)).astype(np.uint8)
    path = tmp_path / "galaxy.png"
    Image.fromarray(disc).save(path)

    monkeypatch.delenv("GALMORPH_MAX_IMAGE_PIXELS", raising=False)
    ok = CliRunner().invoke(main, ["a1", str(path), "--json"])
    assert max_image_pixels() == MAX_IMAGE_PIXELS and "over the limit" not in ok.output

    monkeypatch.setenv("GALMORPH_MAX_IMAGE_PIXELS", "1000")  # a 64x64 image is 4096 pixels
    res = CliRunner().invoke(main, ["a1", str(path), "--json"])
    assert "4096 pixels is over the limit of 1000 pixels" in res.output, res.output
    assert max_image_pixels() == 1000
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_image(path)
    assert load_image(path, max_pixels=None).shape == (64, 64)  # an explicit limit wins

    monkeypatch.setenv("GALMORPH_MAX_IMAGE_PIXELS", "lots")
    bad = CliRunner().invoke(main, ["a1", str(path), "--json"])
    assert bad.exit_code == 2 and "GALMORPH_MAX_IMAGE_PIXELS" in bad.output


def test_score_tta_views_takes_the_one_view_temperature(mlflow_server, sim_chirality, tmp_path):
    import json

    import mlflow
    import pandas as pd
    import torch
    from click.testing import CliRunner

    from galmorph.cli import main
    from galmorph.scoring.inference import predict_manifest
    from galmorph.models.chirality import ChiralityViews
    from galmorph.models.io import ModelSpec, load_for_inference, log_model

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 14 * 14, 3)).eval()
    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="tiny", image_size=16,
                     temperature=1.5, tta_views=8, single_view_model="model_views1")
    mlflow.set_experiment("leftovers-tta")
    with mlflow.start_run() as run:
        log_model(ChiralityViews(plain, 8).eval(), spec, name="model")
        log_model(plain, ModelSpec(**{**spec.to_dict(), "tta_views": 1, "single_view_model": "",
                                      "temperature": 2.5}), name="model_views1")
    uri = f"runs:/{run.info.run_id}/model"
    one = load_for_inference(uri, tta_views=1)
    assert (one.spec.tta_views, one.spec.temperature) == (1, 2.5)
    assert load_for_inference(uri).spec.temperature == 1.5

    man = pd.read_parquet(sim_chirality["manifest"]).head(12)
    man_path = tmp_path / "m.parquet"
    man.to_parquet(man_path)
    for views in ("1", "8"):
        out = tmp_path / f"v{views}"
        res = CliRunner().invoke(main, ["score", "--model", uri, "--manifest", str(man_path), "--out", str(out),
                                        "--tta-views", views, "--no-log-mlflow", "--no-progress"])
        assert res.exit_code == 0, res.output
        meta = json.loads((out / "scoring.json").read_text())
        assert meta["tta_views"] == int(views) and meta["temperature"] == (2.5 if views == "1" else 1.5)

    eight = load_for_inference(uri, tta_views=8)
    kw: dict = {}
    p, pm = predict_manifest(eight, man, **kw), predict_manifest(eight, man, mirror=True, **kw)
    np.testing.assert_allclose(pm["p_CW"], p["p_ACW"], atol=1e-5)
    np.testing.assert_allclose(pm["p_other"], p["p_other"], atol=1e-5)
    q, qm = predict_manifest(one, man, **kw), predict_manifest(one, man, mirror=True, **kw)
    assert np.abs(qm["p_CW"] - q["p_ACW"]).max() > 1e-4  # the 1-view net alone is not mirror-consistent

    # 2 views (mirror pair) wrap the exported 1-view GraphModule, which refuses train()/eval()
    two = load_for_inference(uri, tta_views=2)
    assert two.spec.tta_views == 2
    r, rm = predict_manifest(two, man, **kw), predict_manifest(two, man, mirror=True, **kw)
    np.testing.assert_allclose(rm["p_CW"], r["p_ACW"], atol=1e-5)


def test_label_sample_ranks_rotation_unstable_galaxies_first(tmp_path):
    """Chirality queues rank by rotation-stability eta: a galaxy whose CW/ACW call flips under rotation
    comes before one the model calls the same way at every angle, whatever their entropy at 0 deg."""
    import torch
    from PIL import Image

    from galmorph.labelling.queue import sample_queue, score_uncertainty
    from galmorph.models.io import ModelSpec

    class LeftRight(torch.nn.Module):
        """CW - ACW logit = k * (left half - right half) brightness; other = total brightness offset."""

        def forward(self, x):
            g = x.mean(dim=1)
            w = g.shape[-1] // 2
            d = 40.0 * (g[..., :w].mean(dim=(-1, -2)) - g[..., w:].mean(dim=(-1, -2)))
            other = 20.0 * (g.mean(dim=(-1, -2)) - 0.5)
            return torch.stack([d, -d, other], dim=1)

    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((xx - 15.5) ** 2 + (yy - 15.5) ** 2) / 60.0)
    stable = np.clip(0.7 + 0.3 * blob, 0, 1)           # symmetric, bright: "other" at every angle
    flipping = np.where(xx < 16, 0.45, 0.05) * 1.0      # bright left half: CW at 0 deg, ACW at 180 deg
    rows = []
    for oid, arr in (("stable", stable), ("flip", flipping)):
        path = tmp_path / f"{oid}.png"
        Image.fromarray((np.repeat(arr[..., None], 3, axis=2) * 255).astype(np.uint8)).save(path)
        rows.append({"object_id": oid, "image_uri": str(path), "z": 0.05})
    man = pd.DataFrame(rows)
    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="toy", image_size=32)
    module = LeftRight().eval()
    with torch.no_grad():
        x = torch.from_numpy(np.stack([np.repeat(a[None], 3, axis=0) for a in (stable, flipping)]).astype("float32"))
        p = torch.softmax(module(x), dim=1).numpy()
    scores = pd.DataFrame({"object_id": ["stable", "flip"], "p_CW": p[:, 0], "p_ACW": p[:, 1], "p_other": p[:, 2]})
    scores["entropy"] = [5.0, 0.0]  # entropy alone would rank "stable" first
    scores = score_uncertainty(scores, module, spec, man, n_passes=1, n_rotations=8)
    eta = dict(zip(scores["object_id"], scores["uncertainty"]))
    assert eta["flip"] > eta["stable"] + 0.3, eta
    q, summary = sample_queue(man, per_bin=5, n_bins=1, z_min=0.01, z_max=0.1, task="chirality", scores=scores)
    assert summary["ranked_by"] == "rotation_eta"
    assert q["object_id"].tolist() == ["flip", "stable"]


def test_eta_is_measured_on_the_most_uncertain_by_entropy_in_chunks(tmp_path, monkeypatch):
    """``max_objects``: eta only for that many rows, the highest-entropy ones; measured in chunks (the
    same values as one pass), so a large candidate set never stacks all its images at once."""
    import torch
    from PIL import Image

    import galmorph.labelling.queue as queue
    from galmorph.models.io import ModelSpec

    rng = np.random.default_rng(3)
    rows = []
    for i in range(9):
        path = tmp_path / f"g{i}.png"
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(path)
        rows.append({"object_id": f"g{i}", "image_uri": str(path), "z": 0.05})
    man = pd.DataFrame(rows)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="toy", image_size=16)
    scores = pd.DataFrame({"object_id": man["object_id"], "entropy": [0.1, 0.9, 0.5, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]})
    full = queue.score_uncertainty(scores, module, spec, man, n_passes=1, n_rotations=4)
    assert full["uncertainty"].notna().all()
    top = queue.score_uncertainty(scores, module, spec, man, n_passes=1, n_rotations=4, max_objects=3)
    measured = set(top.loc[top["uncertainty"].notna(), "object_id"])
    assert measured == {"g1", "g3", "g5"}  # entropies 0.9, 0.8, 0.7
    np.testing.assert_allclose(top.set_index("object_id").loc[sorted(measured), "uncertainty"],
                               full.set_index("object_id").loc[sorted(measured), "uncertainty"], atol=1e-5)
    sizes: list[int] = []
    import galmorph.evaluation.chirality as chir

    orig = chir.rotation_stability

    def counting(module, images, *a, **k):
        sizes.append(len(images))
        return orig(module, images, *a, **k)

    monkeypatch.setattr(chir, "rotation_stability", counting)
    chunked = queue.score_uncertainty(scores, module, spec, man, n_passes=1, n_rotations=4, chunk_size=4)
    assert sizes == [4, 4, 1]
    np.testing.assert_allclose(chunked["uncertainty"], full["uncertainty"], atol=1e-5)
