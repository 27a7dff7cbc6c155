"""The training decoded-image cache (galmorph.datasets.images.DecodedImageCache) and its use by the data module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galmorph.datasets.images import DecodedImageCache
from test_scoring_helpers import count_decodes as count_image_decodes


@pytest.fixture()
def count_decodes(monkeypatch):
    return count_image_decodes(monkeypatch)


def _module(man, cache_dir, cache=True, **kw):
    from galmorph.datasets.datamodule import GalaxyDataModule

    return GalaxyDataModule(man, "chirality", ["CW", "ACW", "other"], image_size=32, batch_size=8,
                            cache_images=cache, cache_dir=cache_dir, seed=1, **kw)


def test_epochs_after_the_first_decode_nothing(sim_chirality, tmp_path, count_decodes):
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    dm = _module(man, tmp_path / "cache")
    dm.setup()
    assert len(count_decodes) == man["image_uri"].nunique()  # the build: each image once
    count_decodes.clear()
    for _ in range(2):
        for _x, _y in dm.train_dataloader():
            pass
        for _x, _y in dm.val_dataloader():
            pass
    assert count_decodes == []
    # a second data module over the same manifest finds the cache on disk: no decode at all
    dm2 = _module(man, tmp_path / "cache")
    dm2.setup()
    next(iter(dm2.train_dataloader()))
    assert count_decodes == [] and dm2.cache.version == dm.cache.version


def test_cached_items_equal_uncached(sim_chirality, tmp_path):
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    a, b = _module(man, tmp_path / "c", cache=True), _module(man, tmp_path / "c", cache=False)
    for name in ("train", "val", "test"):
        da, db = a.dataset(name), b.dataset(name)
        assert len(da) == len(db)
        for i in range(len(da)):
            xa, ya = da[i]
            xb, yb = db[i]
            assert ya == yb and torch.equal(xa, xb)


def test_cache_is_keyed_by_the_dataset_version(sim_chirality, tmp_path, count_decodes):
    from galmorph.imaging.io import load_image
    from galmorph.catalogue.manifest import read_manifest

    uris = read_manifest(sim_chirality["manifest"])["image_uri"].astype(str).tolist()
    c1 = DecodedImageCache(tmp_path, uris).build()
    n1 = len(count_decodes)
    assert n1 == len(set(uris)) and c1.complete
    count_decodes.clear()
    assert DecodedImageCache(tmp_path, list(reversed(uris))).build().version == c1.version  # same set
    assert count_decodes == []
    c2 = DecodedImageCache(tmp_path, uris[:-3]).build()  # a changed manifest: another version, rebuilt
    assert c2.version != c1.version and len(count_decodes) == len(set(uris[:-3]))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([c1.version, c2.version])
    # native resolution, bit-identical to load_image (JPEG rasters stored as uint8)
    for u in uris[:5]:
        ref = load_image(u)
        got = c1.get(u)
        assert got.shape == ref.shape and got.dtype == np.float32 and np.array_equal(got, ref)
    # a rewritten image file changes the version too
    import os

    st = os.stat(uris[0])
    os.utime(uris[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert DecodedImageCache(tmp_path, uris).version != c1.version


def test_float_images_are_cached_as_float(sim_chirality, tmp_path):
    from galmorph.imaging.io import load_image
    from galmorph.catalogue.manifest import read_manifest

    fits = read_manifest(sim_chirality["manifest"])["fits_path"].astype(str).tolist()[:3]
    c = DecodedImageCache(tmp_path, fits).build()
    for f in fits:
        assert np.array_equal(c.get(f), load_image(f))


def test_loader_workers_share_the_cache_and_decode_nothing(sim_chirality, tmp_path):
    """With DataLoader worker processes the memory-mapped cache serves every item: once it is built the
    image files can go away, and the workers' batches equal the in-process uncached ones."""
    import shutil

    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    ref = _module(man, tmp_path / "c0", cache=False, num_workers=0)
    expected = [(x.clone(), y.clone()) for x, y in ref.val_dataloader()]
    moved = tmp_path / "images"
    moved.mkdir()
    copies = []
    for uri in man["image_uri"].astype(str):
        dst = moved / f"{len(copies)}_{uri.rsplit('/', 1)[-1]}"
        shutil.copy(uri, dst)
        copies.append(str(dst))
    man = man.assign(image_uri=copies)
    dm = _module(man, tmp_path / "c1", cache=True, num_workers=1)
    dm.setup()
    shutil.rmtree(moved)  # nothing can be decoded any more
    got = list(dm.val_dataloader())
    assert len(got) == len(expected)
    for (xa, ya), (xb, yb) in zip(got, expected):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    n = sum(len(y) for _x, y in dm.train_dataloader())  # augmented training batches from the cache too
    assert n >= len(dm.dataset("train")) - 1  # (a last batch of one image is dropped)


def test_num_workers_from_the_machine():
    import os

    from galmorph.datasets.datamodule import loader_settings
    from galmorph.training.config import ConfigError, resolve_config

    assert resolve_config("chirality", "tiny", {"num_workers": -1}).num_workers == -1
    with pytest.raises(ConfigError, match="num_workers"):
        resolve_config("chirality", "tiny", {"num_workers": -2})
    assert loader_settings(None)["num_workers"] == max(0, min(4, (os.cpu_count() or 1) - 1))
