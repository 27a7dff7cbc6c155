"""One rank of a local data-parallel launch (#28): ``python -m galmorph.training.rank SPEC``.

:func:`galmorph.training.ddp.launch_local` starts ``devices`` of these under ``torchrun --standalone``; each
calls :func:`galmorph.training.train` with the launch's arguments (``SPEC``, a JSON file in the training's
working folder) and finds its rank in torchrun's environment. Rank 0 writes its result beside the spec,
where the launcher reads it back. (A module of its own, not ``runner``'s ``__main__``: the package imports
``runner``, and a module run with ``-m`` should not be imported twice.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from galmorph.training.ddp import RESULT_FILE, launched_world
from galmorph.training.runner import result_to_json, train


def main(spec_path: str | Path) -> int:
    rank = (launched_world() or (0, 1))[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    with contextlib.redirect_stdout(sys.stderr):  # MLflow's "View run" lines
        res = train(**spec)
    if rank == 0:
        out = Path(spec["out_dir"]) / RESULT_FILE
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result_to_json(res), indent=2, default=float))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
