"""Install uv into an image from its PyPI wheel (stdlib only: the base needs no pip).

    python3 install_uv.py VERSION [DEST_DIR]

Downloads the manylinux wheel of ``uv==VERSION`` for this machine from PyPI's simple index (the
PEP 691 JSON form; the index URL is UV_INSTALL_INDEX, default https://pypi.org/simple), checks its
sha256 against the index and extracts the ``uv`` and ``uvx`` binaries to DEST_DIR (/usr/local/bin).
HTTPS uses SSL_CERT_FILE when set (a build argument, so the host's CA bundle is never baked in).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import ssl
import sys
import urllib.request
import zipfile


def main(version: str, dest: str = "/usr/local/bin") -> None:
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    arch = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
    index = os.environ.get("UV_INSTALL_INDEX", "https://pypi.org/simple").rstrip("/")
    req = urllib.request.Request(f"{index}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    meta = json.load(urllib.request.urlopen(req, context=ctx))
    wheels = [f for f in meta["files"] if f["filename"].startswith(f"uv-{version}-")
              and f["filename"].endswith(".whl") and "manylinux" in f["filename"]
              and f"_{arch}" in f["filename"] and "musl" not in f["filename"]]
    if not wheels:
        sys.exit(f"install_uv: no manylinux {arch} wheel of uv {version} on PyPI")
    wheel = wheels[0]
    data = urllib.request.urlopen(wheel["url"], context=ctx).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != wheel["hashes"]["sha256"]:
        sys.exit(f"install_uv: sha256 mismatch for {wheel['filename']}: {digest}")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if "/scripts/" in name and base in ("uv", "uvx"):
                target = os.path.join(dest, base)
                with open(target, "wb") as fh:
                    fh.write(zf.read(name))
                os.chmod(target, 0o755)
    print(f"installed uv {version} ({wheel['filename']}) to {dest}")


if __name__ == "__main__":
    main(*sys.argv[1:])
