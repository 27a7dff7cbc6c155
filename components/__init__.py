"""galmorph's Kubeflow components, importable as ``galmorph_components`` (the wheel and the editable
install map the top-level ``components/`` folder to this name).

Each ``components/<name>/component.py`` defines one ``@dsl.component`` called ``<name>``, e.g.
``from galmorph_components.ingest.component import ingest``; its body is one call into
:mod:`galmorph.pipelines.steps`.
"""
