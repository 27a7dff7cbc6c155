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
def demo_cmd(out_dir: Path | None, tasks: tuple[str, ...], preset: str, release_size: int, seed: int) -> None:
    """Run the platform end to end locally: stack up, simulate data, the training pipeline per task
    (kfp local runner) with promotion, then the rescoring pipeline on a new simulated release; print the
    MLflow UI address and where the outputs are."""
    from galmorph.demo import DEMO_TASKS, run_demo
    from galmorph.pipelines.run import PipelineRunError
    from galmorph.settings import REPO_ROOT, resolve_settings

    try:
        run_demo(resolve_settings(), out_dir or REPO_ROOT / "outputs" / "demo", tasks or DEMO_TASKS, preset=preset,
                 release_n=release_size, seed=seed, echo=click.echo)
    except (PipelineRunError, RuntimeError, TimeoutError) as exc:
        fail(f"demo failed: {exc}")
