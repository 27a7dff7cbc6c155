"""galmorph's Kubeflow pipeline definitions, importable as ``galmorph_pipelines`` (the wheel and the
editable install map the top-level ``pipelines/`` folder to this name).

``galmorph_pipelines.<name>.pipeline`` is the ``@dsl.pipeline`` of ``pipelines/<name>.py``; the compiled
IR YAML packages ``<name>.yaml`` sit beside it (:data:`PACKAGE_DIR`, shipped with the wheel).
"""

from pathlib import Path

#: The folder of the compiled ``<name>.yaml`` packages (this package's folder).
PACKAGE_DIR = Path(__file__).resolve().parent
