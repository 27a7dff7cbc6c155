"""A model card and a lineage chain built from a real local run on the real MLflow server: a training-style
run (DVC data version tags, class counts) registers a model, `evaluate` writes and attaches its card,
`promote` updates it, `galmorph score` records its run by default, and `galmorph lineage` prints the chain
from the data version to the release and its drift verdict."""

import json

import mlflow
import pytest
from click.testing import CliRunner

from test_eval_support import OracleNet, write_coded_dataset

CLASSES = ["symmetric", "lopsided"]


@pytest.fixture(scope="module")
def chain(mlflow_server, tmp_path_factory):
    from galmorph.evaluation import evaluate
    from galmorph.models.io import ModelSpec, log_model
    from galmorph.promotion.registry import promote
    from galmorph.training.runner import dataset_version

    tmp = tmp_path_factory.mktemp("lineage")
    manifest, truth = write_coded_dataset(tmp / "data", CLASSES, n=48, seed=9)
    name = "galmorph-lintest"
    mlflow.set_experiment("test-lineage")
    tags = {"galmorph.manifest": str(manifest), "galmorph.preset": "test", "galmorph.arch": "oracle",
            **dataset_version(manifest)}
    with mlflow.start_run(run_name="train-lintest", tags=tags) as run:
        mlflow.log_dict({"symmetric": 24, "lopsided": 24}, "class_counts.json")
        spec = ModelSpec(task="lintest", classes=CLASSES, arch="oracle", image_size=16, temperature=1.5,
                         extra={"encoder_init": "random"})
        info = log_model(OracleNet(2, error_rate=0.2).eval(), spec, registered_model_name=name)
    version = str(info.registered_model_version)
    ev = evaluate(f"models:/{name}/{version}", manifest, tmp / "eval", explain=False)
    audit = tmp / "audit.jsonl"
    dec = promote("lintest", version, eval_manifest=manifest, audit_log=audit, out_dir=tmp / "promo",
                  evaluate_kwargs={"explain": False})
    return {"manifest": manifest, "name": name, "version": version, "train_run": run.info.run_id, "eval": ev,
            "decision": dec, "tmp": tmp, "tags": tags}


def test_model_card_written_at_evaluation_and_updated_at_promotion(chain):
    ev, name, version = chain["eval"], chain["name"], chain["version"]
    card = ev.report["model_card"]
    assert card["model"]["encoder_init"] == "random" and card["model"]["version"] == version
    assert card["training"]["run_id"] == chain["train_run"]
    assert card["training"]["data_version"]["data_version"] == chain["tags"]["galmorph.data_version"]
    assert card["training"]["class_counts"] == {"symmetric": 24, "lopsided": 24}
    assert card["calibration"]["temperature"] == 1.5
    assert card["evaluation"]["overall"]["f1_macro"] == pytest.approx(ev.metrics["f1_macro"], abs=1e-4)
    assert set(card["evaluation"]["redshift_bins"]) == {"0.01-0.03", "0.03-0.05", "0.05-0.07", "0.07-0.10"}
    assert "Model card" in ev.report_html.read_text() and "Calibration" in ev.report_html.read_text()
    md = (ev.report_html.parent / "model_card.md").read_text()
    assert "## Intended use" in md and "## Known failure modes" in md
    mv = mlflow.MlflowClient().get_model_version(name, version)
    # the version page: a short readable description, the card JSON as a tag, the full card as artifacts
    assert mv.description.splitlines()[0].startswith("lintest classifier") and "Promotion: first-champion" in mv.description
    tagged = json.loads(mv.tags["galmorph.card"])
    assert tagged["decision"]["decision"] == "first-champion" and tagged["model"]["name"] == name
    run_id = mv.tags["galmorph.card_run_id"]
    full = mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation/model_card.json")
    assert full["decision"]["decision"] == "first-champion"
    assert any("quality floor passed" in r for r in full["decision"]["reasons"])


def test_lineage_chain_from_model_and_from_catalogue(chain, mlflow_server):
    from galmorph.cli import main

    name, version, tmp = chain["name"], chain["version"], chain["tmp"]
    runner = CliRunner()
    out = tmp / "scored"
    # `galmorph score` records its MLflow run by default
    r = runner.invoke(main, ["score", "--model", f"models:/{name}@champion", "--manifest", str(chain["manifest"]),
                             "--out", str(out), "--release", "rel-1", "--no-progress", "--num-workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    score_run = json.loads(r.stdout)["mlflow_run_id"]
    # the drift step tags the scoring run with its verdict (galmorph.drift.report._log_mlflow)
    mlflow.MlflowClient().set_tag(score_run, "drift.verdict", "drift")
    r = runner.invoke(main, ["lineage", f"models:/{name}@champion", "--json"])
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)  # --json: stdout is exactly one JSON document
    assert c["data"]["manifest"] == str(chain["manifest"])
    assert c["data"]["data_version"] == chain["tags"]["galmorph.data_version"]
    assert c["data"]["changed_since_training"] is False
    assert c["training"]["run_id"] == chain["train_run"]
    assert c["model"]["version"] == version and c["model"]["aliases"] == ["champion"]
    assert c["model"]["decision"] == "first-champion"
    assert [(x["release"], x["run_id"], x["drift_verdict"]) for x in c["releases"]] == [("rel-1", score_run, "drift")]
    # from the catalogue: the same chain, plus the catalogue
    r = runner.invoke(main, ["lineage", str(out / "catalogue.parquet")])
    assert r.exit_code == 0, r.output
    assert f"{name} v{version}" in r.output and "release rel-1" in r.output and "drift verdict drift" in r.output
    assert chain["tags"]["galmorph.data_version"] in r.output
    r = runner.invoke(main, ["lineage", f"models:/{name}/999"])
    assert r.exit_code != 0 and "not in the registry" in r.output
