"""`galmorph demo`: the README's main command."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import fail, main
from galmorph.cli.options import task_option


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the demo writes everything [<repo>/outputs/demo].")
@task_option(multiple=True, name="tasks", help="Tasks to train (repeatable) [all three].")
@click.option("--preset", default="tiny", show_default=True, help="Training preset.")
@click.option("--release-size", type=click.IntRange(8), default=40, show_default=True,
              help="Galaxies in the simulated survey release that gets rescored.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--real", is_flag=True,
              help="On the public data instead: chirality reference preset on GZ1 (all CW/ACW + a sample of "
                   "other; ~20 min on 2 cores), promotion, DECaLS rescored as a new survey release, drift "
                   "verdict [outputs: <repo>/outputs/demo-real].")
@click.option("--n-other", type=click.IntRange(0), default=None,
              help="--real: GZ1 'other' galaxies sampled beside all CW/ACW [500].")
@click.option("--max-epochs", type=click.IntRange(1), default=None,
              help="--real: override the preset's epochs (a quick smoke run).")
def demo_cmd(out_dir: Path | None, tasks: tuple[str, ...], preset: str, release_size: int, seed: int,
             real: bool, n_other: int | None, max_epochs: int | None) -> None:
    """Run the platform end to end locally: stack up, simulate data, the training pipeline per task
    (kfp local runner) with promotion, then the rescoring pipeline on a new simulated release; print the
    MLflow UI address and where the outputs are. With --real: the same on the public GZ1 and DECaLS data."""
    from galmorph.ops.demo import DEMO_TASKS, REAL_N_OTHER, run_demo, run_real_demo
    from galmorph.ops.run import PipelineRunError
    from galmorph.settings import REPO_ROOT, resolve_settings

    if not real and (n_other is not None or max_epochs is not None):
        fail("--n-other and --max-epochs apply to --real only")
    try:
        if real:
            run_real_demo(resolve_settings(), out_dir or REPO_ROOT / "outputs" / "demo-real",
                          n_other=REAL_N_OTHER if n_other is None else n_other, seed=seed, max_epochs=max_epochs,
                          echo=click.echo)
            return
        run_demo(resolve_settings(), out_dir or REPO_ROOT / "outputs" / "demo", tasks or DEMO_TASKS, preset=preset,
                 release_n=release_size, seed=seed, echo=click.echo)
    except (PipelineRunError, RuntimeError, TimeoutError, FileNotFoundError, ValueError) as exc:
        fail(f"demo failed: {exc}")
