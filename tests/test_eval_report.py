"""`evaluate` end to end against the real MLflow server: metrics equal scikit-learn's on the written
predictions and the known truth of the coded images, quarantine of bad rows, the HTML report and
every metric logged; chirality diagnostics + explanations of a CE model; trials; the CLI."""

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from galmorph.evaluation import evaluate, evaluate_trials
from galmorph.catalogue.manifest import read_manifest, write_manifest
from test_eval_support import ChiralityCE, OracleNet, log_test_model, write_coded_dataset

CLASSES = ["symmetric", "lopsided"]


@pytest.fixture(scope="module")
def coded_with_bad_rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("coded-eval")
    path, truth = write_coded_dataset(d, CLASSES, n=60, seed=2)
    man = read_manifest(path)
    bad = man.iloc[[0, 1, 2]].copy()
    bad["object_id"] = ["broken", "alien", "nolabel"]
    broken = d / "broken.png"
    broken.write_bytes(b"not a png")
    bad.loc[bad.index[0], "image_uri"] = str(broken)
    bad.loc[bad.index[1], "label"] = "spiral"
    bad.loc[bad.index[2], "label"] = None
    full = pd.concat([man, bad], ignore_index=True)
    return write_manifest(full, d / "with_bad.parquet", kind="test"), truth


def test_evaluate_metrics_report_and_mlflow(mlflow_server, coded_with_bad_rows, tmp_path):
    path, truth = coded_with_bad_rows
    info = log_test_model(OracleNet(2, error_rate=0.25), "lopsided", CLASSES, 16,
                          registered_name="galmorph-test-eval-oracle")
    uri = f"models:/galmorph-test-eval-oracle/{info.registered_model_version}"
    res = evaluate(uri, path, tmp_path / "ev", explain=True)
    # every row accounted for; bad rows quarantined with reasons
    assert res.report["counts"] == {"total": 63, "evaluated": 60, "image_errors": 1, "unlabelled": 1,
                                    "unknown_label": 1}
    q = pd.read_parquet(res.quarantine_path)
    assert set(q["object_id"]) == {"broken", "alien"}
    assert q.set_index("object_id").loc["alien", "reason"].startswith("label 'spiral' is not one of")
    pred = pd.read_parquet(res.predictions_path)
    assert len(pred) == 63 and pred["evaluated"].sum() == 60
    # the oracle's known behaviour: wrong exactly where u < error_rate
    ev = pred[pred["evaluated"]].merge(truth[["object_id", "u"]], on="object_id")
    expected_correct = ev["u"] + 0.5 / 255 >= 0.25
    assert ((ev["pred"] == ev["label"]) == expected_correct).all()
    assert res.metrics["accuracy"] == pytest.approx(expected_correct.mean())
    # and the metrics equal scikit-learn's on the written predictions
    y = (ev["label"] == "lopsided").astype(int)
    yp = (ev["pred"] == "lopsided").astype(int)
    assert res.metrics["f1_macro"] == pytest.approx(skm.f1_score(y, yp, average="macro"))
    assert res.metrics["auc_macro"] == pytest.approx(skm.roc_auc_score(y, ev["p_lopsided"]))
    assert res.metrics["precision_lopsided"] == pytest.approx(skm.precision_score(y, yp))
    for b in ("0.01-0.03", "0.05-0.07"):
        sel = ev["z_bin"] == b
        assert res.metrics[f"zbin_{b}_auc_macro"] == pytest.approx(skm.roc_auc_score(y[sel], ev.loc[sel, "p_lopsided"]))
    hi = ev["p_pred"] >= 0.85
    assert res.metrics["thr0.85_coverage"] == pytest.approx(hi.mean())
    assert res.metrics["thr0.85_accuracy"] == pytest.approx((ev["pred"] == ev["label"])[hi].mean())
    # report written and logged, every finite number is an MLflow metric of the evaluation run
    html = res.report_html.read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Redshift bins" in html and "Probability thresholds" in html
    # calibration: a reliability diagram and ECE overall and per redshift bin, ECE recomputed from the predictions
    from galmorph.evaluation.calibration import expected_calibration_error

    zcal = res.report["calibration"]["redshift_bins"]
    for b in ev["z_bin"].unique():
        sel = (ev["z_bin"] == b).to_numpy()
        proba = ev.loc[sel, ["p_symmetric", "p_lopsided"]].to_numpy()
        assert zcal[b]["n"] == int(sel.sum()) and sum(zcal[b]["count"]) == int(sel.sum())
        assert res.metrics[f"zbin_{b}_ece"] == pytest.approx(expected_calibration_error(proba, y[sel].to_numpy()))
        assert f'alt="reliability diagram z {b}"' in html
    assert json.loads(res.report_json.read_text())["counts"]["evaluated"] == 60
    run = mlflow.get_run(res.run_id)
    finite = {k: v for k, v in res.metrics.items() if np.isfinite(v)}
    assert run.data.metrics == pytest.approx(finite)
    assert run.data.tags["galmorph.model_name"] == "galmorph-test-eval-oracle"
    assert run.data.tags["galmorph.model_version"] == str(info.registered_model_version)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(res.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.json", "evaluation/predictions.parquet",
            "evaluation/quarantine.parquet", "evaluation/explanations.npz"} <= arts
    # inside an active run, the evaluation logs there
    mlflow.set_experiment("test-eval-active")
    with mlflow.start_run() as r:
        res2 = evaluate(uri, path, tmp_path / "ev2", html=False)
    assert res2.run_id == r.info.run_id
    assert mlflow.get_run(r.info.run_id).data.metrics["accuracy"] == pytest.approx(res.metrics["accuracy"])


def test_evaluate_chirality_ce_model_with_diagnostics(mlflow_server, sim_chirality, tmp_path):
    info = log_test_model(ChiralityCE(seed=5, dropout=0.3), "chirality", ["CW", "ACW", "other"], 32,
                          registered_name="galmorph-test-eval-ce", chirality_equivariant=True, arch="ce")
    res = evaluate(f"models:/galmorph-test-eval-ce/{info.registered_model_version}", sim_chirality["manifest"],
                   tmp_path / "ev", rotation_passes=3, rotation_angles=3, rotation_max_objects=6,
                   sweep_realisations=3, log_to_mlflow=True)  # explanations: on by default with the HTML report
    ch = res.report["chirality"]
    assert ch["mirror"]["passed"] and ch["mirror"]["max_prob_diff"] <= 1e-5
    assert res.metrics["chirality_mirror_passed"] == 1.0
    assert ch["rotation"]["mc_dropout"] is True and ch["rotation"]["n_galaxies"] == 6
    assert 0 <= res.metrics["chirality_rotation_eta_mean"] <= 1
    # the MC-dropout predictive spread of the same galaxies (the model has head dropout)
    assert ch["mc_dropout"]["n_galaxies"] == 6 and res.metrics["chirality_mc_dropout_spread"] > 0
    assert np.isfinite(ch["sweep"]["slope"]) and ch["sweep"]["n"] >= 144
    lab = pd.read_parquet(res.predictions_path)
    assert ch["cvs"]["n_acw_labels"] == int((lab["label"] == "ACW").sum())
    npz = np.load(res.extra_paths["explanations"])
    assert npz["gradcam"].shape[1:] == (32, 32) and (npz["gradcam"] >= 0).all()
    # one Grad-CAM map per test-time view (image, mirror), each in the input frame, and a panel per class
    assert res.report["explanations"]["views"] == ["identity", "mirror"]
    assert npz["gradcam[mirror]"].shape == npz["gradcam"].shape
    html = res.report_html.read_text()
    assert "Chirality diagnostics" in html and "Explanations" in html and "views identity, mirror" in html
    shown = {c for c in ("CW", "ACW", "other") if f"<h3>class {c}</h3>" in html}
    assert shown == set(res.report["explanations"]["examples"][i]["true_class"]
                        for i in range(len(res.report["explanations"]["examples"])))
    assert "Calibration" in html and "mirror test passed" in html  # the card's failure-mode list
    # the examples table and the card are real markup, not escaped HTML source
    assert "&lt;" not in html and "## Intended use" in html
    for e in res.report["explanations"]["examples"]:
        assert f'<td class="text">{e["object_id"]}</td>' in html


def test_trials_and_cli(mlflow_server, coded_with_bad_rows, tmp_path):
    from galmorph.cli import main

    path, _ = coded_with_bad_rows
    uris = []
    for e in (0.1, 0.3):
        info = log_test_model(OracleNet(2, error_rate=e), "lopsided", CLASSES, 16,
                              registered_name="galmorph-test-eval-trials")
        uris.append(f"models:/galmorph-test-eval-trials/{info.registered_model_version}")
    results, agg = evaluate_trials(uris, path, tmp_path / "trials", log_to_mlflow=False, html=False)
    accs = [r.metrics["accuracy"] for r in results]
    assert agg["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert agg["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert (tmp_path / "trials" / "trials.json").exists()
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["evaluate", "--model", uris[0], "--manifest", str(path), "--out", str(out),
                                    "--z-edges", "0.01,0.05,0.10", "--json"])
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)  # --json: stdout is exactly one JSON document (MLflow's lines go to stderr)
    assert js["metrics"]["accuracy"] == pytest.approx(accs[0])
    assert "zbin_0.01-0.05_auc_macro" in js["metrics"] and (out / "report.html").exists()
    bad = CliRunner().invoke(main, ["evaluate", "--model", uris[0], "--manifest", str(path), "--z-edges", "0.1,0.05"])
    assert bad.exit_code != 0 and "increasing" in bad.output
    shutil.rmtree(out)


def test_pipeline_evaluate_step_writes_explanations_eta_and_card(mlflow_server, sim_chirality, tmp_path,
                                                                  monkeypatch):
    """The training pipeline's evaluate step (galmorph.steps.evaluate) writes the same report as
    the CLI: a panel of example maps per class, rotation-stability eta on at most 200 galaxies, and the
    model card; a model without dropout gets no MC-dropout spread, with the reason."""
    import galmorph.evaluation.core as core
    from galmorph import steps

    info = log_test_model(ChiralityCE(seed=6), "chirality", ["CW", "ACW", "other"], 32,
                          registered_name="galmorph-test-eval-step", chirality_equivariant=True, arch="ce")
    seen = {}
    real = core.evaluate

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "rotation_passes": 2, "rotation_angles": 3, "sweep_realisations": 2})

    monkeypatch.setattr(core, "evaluate", spy)
    out = steps.evaluate(f"models:/galmorph-test-eval-step/{info.registered_model_version}",
                         sim_chirality["manifest"], tmp_path / "report.html", tmp_path / "pred.parquet",
                         tracking_uri=mlflow_server, metrics={})
    assert seen["rotation_max_objects"] == 200 and "rotation_passes" not in seen  # eta on by default, <= 200
    html = (tmp_path / "report.html").read_text()
    labels = set(pd.read_parquet(tmp_path / "pred.parquet")["label"].dropna())
    assert {c for c in ("CW", "ACW", "other") if f"<h3>class {c}</h3>" in html} == labels & {"CW", "ACW", "other"}
    assert "Rotation stability" in html and "Model card" in html and "Calibration" in html
    run = mlflow.get_run(out.run_id)
    assert 0 <= run.data.metrics["chirality_rotation_eta_mean"] <= 1
    assert "chirality_mc_dropout_spread" not in run.data.metrics
    assert "no dropout layer" in html  # the MC-dropout refusal, in the report's skipped list


def test_no_html_is_built_in_python_code():
    """Every HTML page is a jinja2 template (#15.4): no string literal in src/ or benchmarks/ holds HTML tags."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tag = re.compile(r"<\s*/?\s*(html|head|body|table|tr|td|th|div|pre|h[1-6]|p|img|ul|li|span|style)\b[^>]*>", re.I)
    found = []
    for path in [*(root / "src").rglob("*.py"), *(root / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and tag.search(node.value):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"HTML built in Python code (use a template): {found}"
