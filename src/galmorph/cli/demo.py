"""`galmorph demo`: the README's main command."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import fail, main
from galmorph.cli.options import task_option


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the demo writes everything [<state folder>/demo, with --real <state folder>/demo-real].")
@task_option(multiple=True, name="tasks",
             help="Tasks to train (repeatable) [params.yaml demo.run: chirality and arms].")
@click.option("--preset", default=None,
              help="Train every task with this preset instead of the demo's settings (params.yaml demo:) "
                   "[the demo's: reference presets at the simulator's scale].")
@click.option("--release-size", type=click.IntRange(8), default=None,
              help="Galaxies in the simulated survey release that gets rescored [params.yaml demo.release_n: 40].")
@click.option("--seed", type=int, default=None, help="Seed of the simulated sets [params.yaml demo.seed: 0].")
@click.option("--real", is_flag=True,
              help="On the public data instead: chirality reference preset on GZ1 (all CW/ACW + a sample of "
                   "other; ~20 min on 2 cores), promotion, DECaLS rescored as a new survey release, drift "
                   "verdict.")
@click.option("--n-other", type=click.IntRange(0), default=None,
              help="--real: GZ1 'other' galaxies sampled beside all CW/ACW [500].")
@click.option("--max-epochs", type=click.IntRange(1), default=None,
              help="--real: override the preset's epochs (a quick smoke run).")
def demo_cmd(out_dir: Path | None, tasks: tuple[str, ...], preset: str | None, release_size: int | None,
             seed: int | None, real: bool, n_other: int | None, max_epochs: int | None) -> None:
    """Run the platform end to end locally: stack up, simulate data, the training pipeline per task
    (kfp local runner) with promotion, then the rescoring pipeline on a new simulated release; print the
    MLflow UI address and where the outputs are. With --real: the same on the public GZ1 and DECaLS data.

    Exit codes: 0 done; 3 a task was left without a champion by the promotion policy (each decision is
    printed with its reasons); 1 any other failure."""
    from mlflow.exceptions import MlflowException

    from galmorph.ops.demo import (EXIT_REJECTED, REAL_N_OTHER, DemoRejected, default_out_dir,
                                   run_demo, run_real_demo)
    from galmorph.ops.run import PipelineRunError
    from galmorph.settings import resolve_settings

    if not real and (n_other is not None or max_epochs is not None):
        fail("--n-other and --max-epochs apply to --real only")
    if real and (preset is not None or release_size is not None):
        fail("--preset and --release-size apply to the simulated demo only")
    settings = resolve_settings()
    try:
        if real:
            run_real_demo(settings, out_dir or default_out_dir(settings).with_name("demo-real"),
                          n_other=REAL_N_OTHER if n_other is None else n_other, seed=seed or 0,
                          max_epochs=max_epochs, echo=click.echo)
            return
        run_demo(settings, out_dir, tasks or None, preset=preset, release_n=release_size, seed=seed,
                 echo=click.echo)
    except DemoRejected as exc:
        fail(f"demo stopped: {exc}", code=EXIT_REJECTED)
    except (PipelineRunError, MlflowException, RuntimeError, TimeoutError, FileNotFoundError,
            ValueError) as exc:  # ValueError: a bad demo config (ConfigError)
        fail(f"demo failed: {exc}")
