"""KFP component: evaluate a model on a held-out labelled dataset (metrics, HTML report, predictions)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(model_uri: str, dataset: Input[Dataset], report: Output[HTML], metrics: Output[Metrics],
             predictions: Output[Dataset], tracking_uri: str = "") -> NamedTuple(
                 "EvaluateOutputs", [("accuracy", float), ("f1_macro", float), ("run_id", str)]):
    """galmorph.evaluation.evaluate (logged to MLflow); the report is also this step's HTML output."""
    import math
    import shutil
    import tempfile
    from collections import namedtuple

    from galmorph.evaluation.core import evaluate as evaluate_model
    from galmorph.pipelines.runtime import open_dataset, setup

    _, root = setup(tracking_uri)
    work = tempfile.mkdtemp(prefix="evaluate-")
    res = evaluate_model(model_uri, open_dataset(dataset.path), work, data_root=root, rotation_passes=0)
    shutil.copyfile(res.report_html, report.path)
    shutil.copyfile(res.predictions_path, predictions.path)
    for k, v in res.metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            metrics.log_metric(k, float(v))
    acc = float(res.metrics.get("accuracy", float("nan")))
    f1 = float(res.metrics.get("f1_macro", float("nan")))
    return namedtuple("EvaluateOutputs", ["accuracy", "f1_macro", "run_id"])(acc, f1, str(res.run_id or ""))
