"""galmorph's monitoring definitions in code, importable as ``galmorph_monitoring`` (the wheel and the
editable install map the top-level ``monitoring/`` folder to this name): ``galmorph_monitoring.dashboards``
holds the Evidently dashboard of the drift project."""
