"""A torch Dataset over a manifest's images (shared by training, evaluation and scoring)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from galmorph.imaging.io import ImageError, load_image
from galmorph.imaging.preprocess import prepare_image
from galmorph.catalogue.manifest import ManifestError, resolve_image_uri



def draft_side(image_size: int, crop_fraction: float = 1.0) -> int:
    """Smallest side a JPEG may be draft-decoded to so that the crop still has ``image_size`` pixels."""
    return int(np.ceil(int(image_size) / float(crop_fraction)))


def load_image_draft(path: str | Path, min_side: int) -> np.ndarray:
    """:func:`~galmorph.imaging.io.load_image` for JPEGs decoded at reduced scale (PIL ``draft``: the
    decoder's 1/2, 1/4, 1/8 DCT scaling) so that both sides stay >= ``min_side``; other formats and
    JPEGs too small to reduce are loaded in full. Same errors, pixel limit and scaling as ``load_image``."""
    return load_image(path, draft_min_side=int(min_side))


class ManifestImageDataset(Dataset):
    """Items are ``(image tensor (C,S,S), label index or -1, row position)``.

    Unreadable images raise :class:`ImageError` naming the object; callers that must not lose rows
    (scoring) catch it per item via ``on_error="skip"``, which returns ``None`` for the image and
    the reason as a fourth element -- use :func:`collate_skip` then.

    ``decode="draft"`` decodes JPEGs at reduced scale (:func:`load_image_draft`; scoring uses it only
    after :mod:`galmorph.accel`'s agreement check). ``check`` (``row -> image -> reason or None``) runs
    on the decoded image before preparation; a reason makes the item fail like an unreadable image
    (the release path validates and scores on the same decoded pixels).
    """

    def __init__(self, manifest: pd.DataFrame, image_size: int, in_chans: int = 3, crop_fraction: float = 1.0,
                 classes: list[str] | tuple[str, ...] | None = None, data_root: Path | str | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, on_error: str = "raise",
                 decode: str = "full", check: Callable[[int, np.ndarray], str | None] | None = None):
        self.df = manifest.reset_index(drop=True)
        # plain lists: per-item pandas indexing costs more than decoding a small JPEG
        self._uris = self.df["image_uri"].tolist()
        self._ids = self.df["object_id"].astype(str).tolist() if "object_id" in self.df.columns else \
            [str(i) for i in range(len(self.df))]
        if decode not in ("full", "draft"):
            raise ValueError(f"decode must be 'full' or 'draft', got {decode!r}")
        self.decode = decode
        self.check = check
        self.decoded: DecodedImageCache | None = None  # set by training (decoded-image cache)
        self.image_size, self.in_chans, self.crop_fraction = int(image_size), int(in_chans), float(crop_fraction)
        self.classes = list(classes) if classes is not None else None
        self.class_index = {c: i for i, c in enumerate(self.classes or [])}
        self.data_root = data_root
        self.transform = transform
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.df)

    def label_index(self, i: int) -> int:
        if self.classes is None:
            return -1
        lab = self.df.at[i, "label"] if "label" in self.df.columns else None
        if lab is None or pd.isna(lab):
            return -1
        if lab not in self.class_index:
            raise ManifestError(f"object {self.df.at[i, 'object_id']}: label {lab!r} not in classes {self.classes}")
        return self.class_index[lab]

    def load(self, i: int) -> np.ndarray:
        try:
            if self.decoded is not None:
                return self.decoded.get(self._uris[i])
            path = resolve_image_uri(self._uris[i], self.data_root)
            if self.decode == "draft":
                img = load_image_draft(path, draft_side(self.image_size, self.crop_fraction))
            else:
                img = load_image(path)
        except (ImageError, ManifestError) as exc:
            raise ImageError(f"object {self._ids[i]}: {exc}") from exc
        if self.check is not None:
            reason = self.check(i, img)
            if reason:
                raise ImageError(f"object {self._ids[i]}: {reason}")
        return img

    def __getitem__(self, i: int):
        try:
            img = self.load(i)
        except ImageError as exc:
            if self.on_error == "raise":
                raise
            return None, -1, i, str(exc)
        x = prepare_image(img, self.image_size, self.in_chans, self.crop_fraction)
        if self.transform is not None:
            x = self.transform(x)
        return torch.from_numpy(np.ascontiguousarray(x)), self.label_index(i), i, None


def collate_skip(batch):
    """Collate that keeps failed items apart: returns ``(images, labels, positions, failures)``
    where ``failures`` is a list of ``(position, reason)``."""
    good = [b for b in batch if b[0] is not None]
    failures = [(b[2], b[3]) for b in batch if b[0] is None]
    if good:
        x = torch.stack([b[0] for b in good])
        y = torch.tensor([b[1] for b in good], dtype=torch.long)
        pos = torch.tensor([b[2] for b in good], dtype=torch.long)
    else:
        x, y, pos = torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return x, y, pos, failures


# --------------------------------------------------------------------------------------------
# decoded-image cache (training): every image decoded once per dataset version
# --------------------------------------------------------------------------------------------
def dataset_version(uris: list[str], data_root: Path | str | None = None) -> str:
    """Hash of a dataset's images: the sorted unique image URIs with each file's size and mtime (a
    changed manifest or a rewritten file gives another version)."""
    import hashlib
    import os

    h = hashlib.sha256()
    for u in sorted({str(u) for u in uris}):
        try:
            st = os.stat(resolve_image_uri(u, data_root))
            h.update(f"{u}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except (OSError, ManifestError):
            h.update(f"{u}\0missing\n".encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (``flock``: released when the holder exits, even killed);
    where ``fcntl`` is missing, no lock (the atomic rename of :meth:`DecodedImageCache.build` still keeps a
    cache whole)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class DecodedImageCache:
    """Decoded images (as :func:`~galmorph.imaging.io.load_image` returns them) in one memory-mapped file
    under ``root/<version>/``, at native resolution (augmentations such as rotations work on the full
    image, nothing is clipped), keyed by :func:`dataset_version`.

    8-bit rasters are stored as uint8 and restored bit-identically (``u8 / 255`` in float32, exactly what
    ``load_image`` computes); other images (FITS, 16-bit) as float32. :meth:`build` decodes every image
    once (atomically: a half-built cache is never used); :meth:`get` maps the file read-only, so
    DataLoader worker processes share the pages and epochs after the first decode nothing.
    """

    def __init__(self, root: str | Path, uris: list[str], data_root: Path | str | None = None):
        self.uris = [str(u) for u in uris]
        self.data_root = data_root
        self.version = dataset_version(self.uris, data_root)
        self.dir = Path(root) / self.version
        self._index: dict[str, tuple[int, tuple[int, ...], str]] | None = None
        self._mm: np.memmap | None = None

    @property
    def complete(self) -> bool:
        return (self.dir / "index.json").exists() and (self.dir / "images.bin").exists()

    def build(self, on_error: str = "raise") -> "DecodedImageCache":
        """Decode every image once into the cache (no-op when this version is already cached).

        Unreadable images raise :class:`ImageError` naming the object (``on_error="skip"``: left out, and
        :meth:`get` decodes them, raising there).

        Processes that build the same version at once (the ranks of a data-parallel run, DataLoader workers,
        two trainings) take turns on a lock file beside it: the first decodes, the others wait and then find
        it complete; and a cache is only ever published whole (written to a temporary folder, then renamed)."""
        if self.complete:
            return self
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.dir.parent / f".{self.version}.lock"):
            if self.complete:  # built by another process (a data-parallel rank) while this one waited
                return self
            return self._build(on_error)

    def _build(self, on_error: str) -> "DecodedImageCache":
        import json
        import os
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f".{self.version}-", dir=self.dir.parent))
        index: dict[str, list] = {}
        off = 0
        try:
            with open(tmp / "images.bin", "wb") as fh:
                for u in dict.fromkeys(self.uris):
                    try:
                        a = load_image(resolve_image_uri(u, self.data_root))
                    except (ImageError, ManifestError) as exc:
                        if on_error == "raise":
                            raise ImageError(f"image {u}: {exc}") from exc
                        continue
                    q = np.rint(a * 255.0)
                    if a.dtype == np.float32 and a.size and 0.0 <= float(a.min()) and float(a.max()) <= 1.0 \
                            and np.array_equal(q.astype(np.float32) / 255.0, a):
                        b, kind = q.astype(np.uint8), "u1"
                    else:
                        b, kind = np.ascontiguousarray(a, dtype=np.float32), "f4"
                    pad = (-off) % 4 if kind == "f4" else 0
                    if pad:
                        fh.write(b"\0" * pad)
                        off += pad
                    fh.write(b.tobytes())
                    index[u] = [off, list(b.shape), kind]
                    off += b.nbytes
                fh.flush()
                os.fsync(fh.fileno())
            (tmp / "index.json").write_text(json.dumps(index))
            try:
                os.replace(tmp, self.dir)
            except OSError:  # another process built it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self

    def _open(self) -> None:
        import json

        idx = json.loads((self.dir / "index.json").read_text())
        self._index = {u: (int(o), tuple(s), k) for u, (o, s, k) in idx.items()}
        size = (self.dir / "images.bin").stat().st_size
        self._mm = np.memmap(self.dir / "images.bin", dtype=np.uint8, mode="r", shape=(max(size, 1),)) \
            if size else np.zeros(1, dtype=np.uint8)

    def get(self, uri: str) -> np.ndarray:
        """The decoded image of ``uri`` (float32, as ``load_image``); decodes it when not cached."""
        if self._index is None:
            if not self.complete:
                return load_image(resolve_image_uri(uri, self.data_root))
            self._open()
        ent = self._index.get(str(uri))
        if ent is None:
            return load_image(resolve_image_uri(uri, self.data_root))
        off, shape, kind = ent
        n = int(np.prod(shape))
        if kind == "u1":
            return np.asarray(self._mm[off:off + n]).reshape(shape).astype(np.float32) / 255.0
        return np.frombuffer(self._mm, dtype=np.float32, count=n, offset=off).reshape(shape).copy()

    def __getstate__(self):  # workers re-open the map
        d = dict(self.__dict__)
        d["_mm"], d["_index"] = None, None
        return d


# --------------------------------------------------------------------------------------------
# JPEG decoding on the device (GPU nodes: nvJPEG through torchvision)
# --------------------------------------------------------------------------------------------
def prepare_jpeg_batch(encoded: list[bytes], image_size: int, in_chans: int = 3, crop_fraction: float = 1.0,
                       device: str = "cpu") -> torch.Tensor:
    """Encoded JPEGs -> model input ``(B, C, S, S)`` float32 (0..1) on ``device``, decoded there with
    ``torchvision.io.decode_jpeg`` (nvJPEG on a CUDA device) and prepared like
    :func:`~galmorph.imaging.preprocess.prepare_image` (centre crop, antialiased bilinear resize,
    channels) without a round trip through host memory."""
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return torch.empty(0, in_chans, image_size, image_size, device=device)
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    imgs = decode_jpeg(datas, mode=ImageReadMode.UNCHANGED, device=device)
    out = []
    for im in imgs:
        x = im.to(torch.float32) / 255.0  # (C, H, W)
        h, w = x.shape[1:]
        if crop_fraction < 1.0:
            sh, sw = max(1, int(round(h * crop_fraction))), max(1, int(round(w * crop_fraction)))
            top, left = (h - sh) // 2, (w - sw) // 2
            x = x[:, top:top + sh, left:left + sw]
        if x.shape[1] != image_size or x.shape[2] != image_size:
            x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        if in_chans == 1 and x.shape[0] != 1:
            x = x.mean(dim=0, keepdim=True)
        elif in_chans == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        out.append(x.contiguous())
    return torch.stack(out)
