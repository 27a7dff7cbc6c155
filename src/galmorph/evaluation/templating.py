"""The jinja2 environment of the evaluation templates (``galmorph/evaluation/templates``, package data)."""

from __future__ import annotations


def template_env(autoescape: bool = True):
    """A jinja2 environment loading the package templates (``do`` extension on)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("galmorph.evaluation", "templates"),
                              autoescape=autoescape, extensions=["jinja2.ext.do"], trim_blocks=False)
