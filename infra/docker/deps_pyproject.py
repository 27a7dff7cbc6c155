"""Print the parts of pyproject.toml that decide the installed dependencies ([project],
[build-system], [dependency-groups], [tool.uv]), so that editing tool settings (pytest markers,
linters) does not invalidate the image's dependency layer.

    python3 deps_pyproject.py pyproject.toml > /deps/pyproject.toml
"""

import re
import sys

KEEP = re.compile(r"^\[\[?(project|build-system|dependency-groups|tool\.uv)([.\]])")
keep = True
for line in open(sys.argv[1], encoding="utf-8"):
    if line.startswith("["):
        keep = bool(KEEP.match(line))
    if keep:
        sys.stdout.write(line)
