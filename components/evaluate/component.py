"""KFP component: evaluate a model on a held-out labelled dataset (metrics, HTML report, predictions)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(model_uri: str, dataset: Input[Dataset], report: Output[HTML], metrics: Output[Metrics],
             predictions: Output[Dataset], tracking_uri: str = "") -> NamedTuple(
                 "EvaluateOutputs", [("accuracy", float), ("f1_macro", float), ("run_id", str)]):
    """galmorph.evaluation.evaluate (logged to MLflow); the report is also this step's HTML output."""
    from galmorph import steps

    return steps.evaluate(model_uri, dataset.path, report.path, predictions.path, tracking_uri=tracking_uri,
                          metrics=metrics.metadata)
