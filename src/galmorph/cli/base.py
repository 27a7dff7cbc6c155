"""The ``galmorph`` command group; area modules register their commands on it."""

from __future__ import annotations

import logging
import sys

import click

from galmorph.cli.output import echo_json, fail

__all__ = ["echo_json", "fail", "main", "resolve_kfp_target"]


class _Group(click.Group):
    """The command group: a filesystem/OS error that no command handled (a read-only or full state
    dir, a folder where a file should be) ends with one clear line naming the path, not a traceback
    (the traceback stays in the debug log)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OSError as exc:
            logging.getLogger("galmorph.cli").debug("unhandled OSError", exc_info=True)
            fail(os_error_message(exc))


def os_error_message(exc: OSError) -> str:
    """``OSError`` as one line: what failed, on which path, and where the state dir is when it is involved."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    msg = f"{what}: {' -> '.join(paths)}" if paths else f"{type(exc).__name__}: {what}"
    try:
        from galmorph.settings import resolve_settings

        state = str(resolve_settings().state_dir)
    except Exception:  # noqa: BLE001 - the hint is optional
        state = None
    if state and any(p == state or p.startswith(state.rstrip("/") + "/") or state.startswith(p.rstrip("/") + "/")
                     for p in paths):
        msg += f" (state dir {state}; set GALMORPH_STATE_DIR to a writable folder)"
    return msg


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Logging verbosity.")
@click.version_option(package_name="galmorph")
def main(log_level: str) -> None:
    """galmorph: galaxy-morphology deep learning from survey catalogue to monitored model.

    Every command reads its defaults from the settings object (environment variables
    GALMORPH_*; see `galmorph settings`). GALMORPH_MAX_IMAGE_PIXELS bounds the size of every image
    read (default 50000000 pixels).
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "git", "alembic", "matplotlib", "PIL", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _apply_image_limit()


def _apply_image_limit() -> None:
    """The process's image pixel limit from the resolved settings (``GALMORPH_MAX_IMAGE_PIXELS``, .env);
    a bad value of it is a clear error; other bad settings are left to the commands that read them."""
    import pydantic

    from galmorph.imaging.io import set_max_image_pixels
    from galmorph.settings import resolve_settings

    try:
        settings = resolve_settings()
    except pydantic.ValidationError as exc:
        bad = [e for e in exc.errors() if e["loc"] and e["loc"][0] == "max_image_pixels"]
        if bad:
            fail(f"GALMORPH_MAX_IMAGE_PIXELS: {bad[0]['msg']} (got {bad[0].get('input')!r})", 2)
        return
    set_max_image_pixels(settings.max_image_pixels)


def resolve_kfp_target(local_run: bool, host: str | None, default_host: str | None) -> str | None:
    """The Kubeflow host to submit to (None for --local); exits with a clear error unless exactly one
    of --local and --host (or GALMORPH_KFP_HOST) is given."""
    host = host or (None if local_run else default_host)
    if local_run == bool(host):
        fail("choose one of --local or --host URL (or set GALMORPH_KFP_HOST)")
    return host
