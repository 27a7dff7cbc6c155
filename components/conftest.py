"""Component tests reuse the shared fixtures of tests/conftest.py (real MLflow server, simulated data)."""

import importlib.util
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("galmorph_tests_conftest", _here.parent / "tests" / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
for _name in dir(_shared):
    if not _name.startswith("__"):
        globals()[_name] = getattr(_shared, _name)

sys.path.insert(0, str(_here.parent / "tests"))  # test_scoring_helpers (small real models)


def artifact(kind, path):
    """A KFP artifact of class ``kind`` at a local path (what the executor hands a component)."""
    return kind(name=Path(path).name, uri=str(path), metadata={})
