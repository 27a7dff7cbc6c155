"""``galmorph train``: train a task with a preset, tracked and registered in MLflow."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, task_option, tracking_uri_option, use_tracking_uri


def _preset_help() -> str:
    from galmorph.training.config import ARCHS, PRESETS

    return ("; ".join(f"{t}: {', '.join(p)}" for t, p in PRESETS.items())
            + f". Named archs: {', '.join(ARCHS)}; any timm model name is an arch too.")


@main.command("train", epilog="Presets per task -- " + _preset_help())
@task_option(required=True)
@click.option("--preset", default="tiny", show_default=True,
              help="Named settings of the task (paper reproductions or tiny CI presets; see below).")
@click.option("--manifest", "manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="Parquet manifest with image_uri and label columns.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (type-checked), e.g. --set lr=1e-4 --set max_epochs=5. Repeatable. "
                   "arch takes a named arch or any timm model name (--set arch=mobilenetv3_small_050; "
                   "random init unless encoder_weights, nothing is downloaded).")
@click.option("--trials", type=click.IntRange(1), default=None, help="Repeated random splits (child runs).")
@click.option("--devices", type=click.IntRange(1), default=None,
              help="Data-parallel processes per node (GPUs per node on GPU; default 1). More than one: Lightning "
                   "DDP (gloo on CPU, NCCL on GPU), --set batch_size is the global batch. Run plainly, the ranks "
                   "start under torchrun here; under torchrun (a TrainJob's nodes) this process is one rank.")
@click.option("--num-nodes", type=click.IntRange(1), default=None,
              help="Nodes of a data-parallel run (> 1 only under a launcher on every node: torchrun, a TrainJob).")
@click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu", "cuda"]), default=None,
              help="Lightning accelerator (default: the preset's, auto). Precision: --set precision=bf16-mixed.")
@click.option("--experiment", default=None, help="MLflow experiment (default galmorph-<task>).")
@tracking_uri_option()
@data_root_option()
@click.option("--no-register", is_flag=True, help="Log the model but do not register it.")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Working folder for checkpoints (default <state_dir>/training/<task>-<preset>).")
@click.option("--show-config", is_flag=True, help="Print the resolved config and exit (no training).")
@json_option("The result is always one JSON document on stdout (training logs go to stderr).")
def train_cmd(task: str, preset: str, manifest: Path, sets: tuple[str, ...], trials: int | None,
              devices: int | None, num_nodes: int | None, accelerator: str | None,
              experiment: str | None, tracking_uri: str | None, data_root: Path | None, no_register: bool,
              out_dir: Path | None, show_config: bool, as_json: bool) -> None:
    """Train TASK with PRESET on MANIFEST; log params, per-epoch metrics, artifacts and the model to
    MLflow and register the best trial's model as galmorph-<task>."""
    from galmorph.settings import resolve_settings
    from galmorph.training.config import ConfigError, config_to_yaml, parse_set_items, resolve_config

    try:
        overrides = parse_set_items(sets)
        for key, value in {"trials": trials, "devices": devices, "num_nodes": num_nodes,
                           "accelerator": accelerator}.items():
            if value is not None:
                overrides[key] = value
        cfg = resolve_config(task, preset, overrides)
    except ConfigError as exc:
        fail(str(exc))
    if show_config:
        click.echo(config_to_yaml(cfg))
        return
    from galmorph.training.runner import train

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    use_tracking_uri(s)  # fails fast when the tracking server is unreachable
    out = out_dir or (s.state_dir / "training" / f"{task}-{preset}")
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # MLflow's "View run" lines; stdout holds only the result
        res = train(task, preset, overrides, manifest=manifest, tracking_uri=s.mlflow_tracking_uri,
                    experiment=experiment, register=not no_register, data_root=s.data_root, out_dir=out)
    if not res.parent_run_id:  # a rank > 0 of a data-parallel run (under torchrun): rank 0 reports
        return
    reference_uri = ""
    if res.run_id:  # the drift reference, as the training pipeline logs it: rescoring monitors drift against it
        from galmorph.drift.reference import log_training_reference

        with contextlib.redirect_stdout(sys.stderr):
            reference_uri = log_training_reference(res.run_id, manifest, s.data_root, res.registered_name,
                                                   res.registered_version)
    echo_json({"model_uri": res.model_uri, "registered_name": res.registered_name,
               "registered_version": res.registered_version, "run_id": res.run_id,
               "parent_run_id": res.parent_run_id, "best_trial": res.best_trial, "drift_reference": reference_uri,
               "metrics": {k: v for k, v in res.metrics.items()
                           if k in ("test_accuracy", "test_f1_macro", "test_accuracy_mean", "test_accuracy_std",
                                    "test_f1_macro_mean", "test_f1_macro_std", "epochs")}})
