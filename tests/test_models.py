"""Model family: invariances (G-ResNet, CE), Zoobot fine-tuning groups and weights, frozen encoders,
torch.export of every architecture, refusal of reflection equivariance for chirality; the arch registry
(named archs build the same networks as before, any timm name is an arch, unknown names suggest close
ones, no arch-name comparisons outside the registry)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from galmorph.models.chirality import ChiralityEquivariant
from galmorph.models.archs import NAMED, UnknownArchError, arch_info
from galmorph.models.networks import build_network, export_plain, zoobot_param_groups
from galmorph.models.params import NetworkParams
from galmorph.models.pretrained import load_pretrained_encoder
from galmorph.training.config import ConfigError, TrainConfig, resolve_config


def _cfg(task="chirality", **kw) -> TrainConfig:
    base = dict(task=task, flips=task != "chirality")
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="module")
def gresnet():
    torch.manual_seed(0)
    net, _ = build_network(_cfg(arch="gresnet18", gresnet_width=0.125, image_size=32))
    return net.eval()


def test_gresnet_invariant_to_90_degree_rotations(gresnet):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        y = gresnet(x)
        for k in (1, 2, 3):
            yr = gresnet(torch.rot90(x, k, dims=[2, 3]))
            assert torch.allclose(y, yr, atol=1e-4), (k, (y - yr).abs().max())
    # a plain ResNet is not invariant: the test can fail
    torch.manual_seed(0)
    plain, _ = build_network(_cfg(arch="resnet18", image_size=32))
    plain.eval()
    with torch.no_grad():
        assert (plain(x) - plain(torch.rot90(x, 1, dims=[2, 3]))).abs().max() > 1e-4


def test_exported_gresnet_is_plain_torch_and_identical(gresnet):
    plain = export_plain(gresnet)
    assert not any(type(m).__module__.startswith("escnn") for m in plain.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gresnet(x), plain(x), atol=1e-5)
        assert torch.allclose(plain(x), plain(torch.rot90(x, 1, dims=[2, 3])), atol=1e-4)


def test_reflection_equivariant_gresnet_refused_for_chirality():
    with pytest.raises(ConfigError, match="reflection"):
        resolve_config("chirality", "gresnet18", {"reflections": True})
    cfg = dataclasses.replace(_cfg(arch="gresnet18"), reflections=True)  # bypassing validation
    with pytest.raises(ValueError, match="refused for chirality"):
        build_network(cfg)
    # allowed for the other tasks
    assert resolve_config("arms", "tiny", {"arch": "gresnet18", "reflections": True}).reflections


def test_chirality_equivariant_mirror_swaps_cw_and_acw_exactly():
    torch.manual_seed(0)
    net, _ = build_network(_cfg(arch="resnet18", chirality_equivariant=True, image_size=32))
    assert isinstance(net, ChiralityEquivariant)
    net.eval()
    x = torch.rand(4, 3, 32, 32)
    mx = torch.flip(x, dims=[3])
    with torch.no_grad():
        z, zm = net(x), net(mx)
    assert torch.equal(z[:, 0], zm[:, 1]) and torch.equal(z[:, 1], zm[:, 0])
    assert torch.equal(z[:, 2], zm[:, 2])
    p, pm = torch.softmax(z, 1), torch.softmax(zm, 1)
    assert torch.equal(p[:, 0], pm[:, 1])  # P_CW(x) = P_ACW(mirror x)
    # the backbone alone is not equivariant (so the property comes from the wrapper)
    with torch.no_grad():
        b, bm = net.backbone(x), net.backbone(mx)
    assert not torch.allclose(b[:, 0], bm[:, 1])


def test_zoobot_finetunes_top_blocks_with_layerwise_decay(tmp_path):
    cfg = resolve_config("lopsided", "tiny")
    net, tags = build_network(cfg)
    assert tags["encoder_init"] == "random"
    groups = zoobot_param_groups(net, lr=1e-5, finetune_blocks=2, lr_decay=0.5, weight_decay=0.05)
    assert [g["name"] for g in groups] == ["head", "encoder_block_0", "encoder_block_1"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-5, 5e-6])
    enc = net.encoder
    assert all(p.requires_grad for p in enc.stages[3].parameters())
    assert all(p.requires_grad for p in enc.stages[2].parameters())
    assert not any(p.requires_grad for p in enc.stages[1].parameters())
    assert not any(p.requires_grad for p in enc.stem.parameters())
    # the head is global pool -> Linear 128 -> Dropout 0.2 -> ReLU -> Linear 2
    kinds = [type(m).__name__ for m in net.head]
    assert kinds == ["Linear", "Dropout", "ReLU", "Linear"] and net.head[0].out_features == 128
    assert net.head[1].p == 0.2 and net.head[3].out_features == 2
    # encoder weights from a local (Lightning-style, prefixed) checkpoint
    torch.manual_seed(123)
    donor, _ = build_network(cfg)
    ckpt = tmp_path / "zoobot.ckpt"
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in donor.encoder.state_dict().items()}}, ckpt)
    net2, tags2 = build_network(dataclasses.replace(cfg, encoder_weights=f"file:{ckpt}"))
    assert tags2["encoder_init"].startswith(f"file:{ckpt} (sha256:")
    for (k, a), b in zip(donor.encoder.state_dict().items(), net2.encoder.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="no tensor matches"):
        torch.save({"foo": torch.zeros(3)}, tmp_path / "bad.pt")
        load_pretrained_encoder(net2.encoder, f"file:{tmp_path / 'bad.pt'}")


def test_efficientnet_b0_frozen_encoder_stays_frozen():
    cfg = resolve_config("arms", "tiny")
    net, _ = build_network(cfg)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert not net.encoder.training and net.head.training  # batch-norm statistics frozen too
    assert net.head[0].out_features == cfg.head_hidden


ARCH_CASES = [
    ("chirality", dict(arch="resnet18")),
    ("chirality", dict(arch="resnet18", chirality_equivariant=True)),
    ("chirality", dict(arch="gresnet18", gresnet_width=0.125, chirality_equivariant=True)),
    ("lopsided", dict(arch="zoobot_convnext_nano")),
    ("arms", dict(arch="efficientnet_b0_frozen", greyscale=True)),
    pytest.param("chirality", dict(arch="resnet50"), marks=pytest.mark.slow),
    pytest.param("chirality", dict(arch="gresnet50", gresnet_width=0.0625), marks=pytest.mark.slow),
    pytest.param("arms", dict(arch="efficientnetv2_m_finetune"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("task,kw", ARCH_CASES)
def test_every_architecture_exports_with_dynamic_batch(task, kw):
    cfg = _cfg(task, image_size=32, **kw)
    torch.manual_seed(0)
    net, _ = build_network(cfg)
    plain = export_plain(net)
    x = torch.rand(2, cfg.in_chans, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(plain, (x,), dynamic_shapes=({0: batch},))
    x5 = torch.rand(5, cfg.in_chans, 32, 32)
    with torch.no_grad():
        ref = net.eval()(x5)
        out = ep.module()(x5)
    assert out.shape == (5, len(cfg.classes()))
    assert torch.allclose(out, ref, atol=1e-4)


def _imports_of(path) -> set[str]:
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_model_layer_does_not_import_training_and_has_no_cycles():
    from pathlib import Path

    import galmorph.models

    root = Path(galmorph.models.__file__).parent
    graph = {f"galmorph.models.{p.stem}": {m for m in _imports_of(p) if m.startswith("galmorph.")}
             for p in root.glob("*.py") if p.stem != "__init__"}
    offenders = {m: sorted(i for i in imps if i.startswith("galmorph.training")) for m, imps in graph.items()}
    assert not any(offenders.values()), offenders

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt in graph and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert not cycles, f"import cycles among model modules: {cycles}"


# ----------------------------------------------------------------------------------------------
# the arch registry (#29): named archs unchanged, any timm name, clear errors
# ----------------------------------------------------------------------------------------------
#: Parameter counts (all, trainable) and a digest of the state-dict keys and shapes of every named arch,
#: measured before the registry replaced the per-name code: saved models and checkpoints still load.
NAMED_ARCH_NETWORKS = [
    ("chirality", dict(arch="resnet18"), 11178051, 11178051, "b8164ee9cabe989d"),
    ("chirality", dict(arch="resnet18", chirality_equivariant=True, classifier_dropout=0.2), 11178051, 11178051,
     "4288db66a47a814b"),
    ("chirality", dict(arch="resnet50"), 23514179, 23514179, "d0c165f6db116c22"),
    ("chirality", dict(arch="efficientnet_lite0"), 3374851, 3374851, "69771d7f9c0706ae"),
    ("arms", dict(arch="efficientnet_lite0", head="dense"), 4694050, 4694050, "f3d1a9c965720df1"),
    ("lopsided", dict(arch="zoobot_convnext_nano"), 15034866, 15034866, "a795762b066d6a7f"),
    ("lopsided", dict(arch="efficientnet_lite0", head="zoobot"), 3535234, 3535234, "f18f1acdfc850772"),
    ("arms", dict(arch="efficientnet_b0_frozen"), 5330590, 1323042, "346a6fd66df7e6c8"),
    ("arms", dict(arch="efficientnet_b0_frozen", greyscale=True), 5330014, 1323042, "80a5399490f91116"),
    ("arms", dict(arch="efficientnetv2_m_finetune"), 54181398, 54181398, "53fa2fd12d999197"),
    ("chirality", dict(arch="gresnet18", gresnet_width=0.125), 120048, 120048, "3b9ce66b65463059"),
    ("chirality", dict(arch="gresnet50", gresnet_width=0.0625), 78650, 78650, "a738078f7c8ce139"),
]


def _digest(net: torch.nn.Module) -> str:
    import hashlib

    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("task,kw,n_params,n_trainable,keys", NAMED_ARCH_NETWORKS,
                         ids=[f"{c[0]}-{'-'.join(str(v) for v in c[1].values())}" for c in NAMED_ARCH_NETWORKS])
def test_named_archs_build_the_same_networks_as_before(task, kw, n_params, n_trainable, keys):
    net, tags = build_network(_cfg(task, **kw))
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == n_trainable
    assert _digest(net) == keys  # same state-dict keys and shapes
    assert tags["encoder_init"] == "random"


def test_every_named_arch_is_covered_and_described():
    assert {c[1]["arch"] for c in NAMED_ARCH_NETWORKS} == set(NAMED)
    assert all(a.named and a.description and a.family in ("timm", "escnn") for a in NAMED.values())
    assert [a for a in NAMED if NAMED[a].equivariant] == ["gresnet18", "gresnet50"]
    assert [a for a in NAMED if NAMED[a].pretrained_weights_available] == ["efficientnet_lite0"]
    assert [a for a in NAMED if NAMED[a].layerwise_finetune] == ["zoobot_convnext_nano"]


def test_any_timm_name_is_an_arch_random_init_and_exportable():
    info = arch_info("mobilenetv3_small_050")
    assert (info.family, info.encoder, info.default_head, info.named) == ("timm", "mobilenetv3_small_050",
                                                                          "linear", False)
    assert not info.pretrained_weights_available and not info.equivariant and info.configurable_head
    cfg = resolve_config("chirality", "tiny", {"arch": "mobilenetv3_small_050", "greyscale": True})
    torch.manual_seed(0)
    net, tags = build_network(cfg)
    assert tags["encoder_init"] == "random" and tags["encoder_init_kind"] == "none"
    assert "never downloaded" in tags["encoder_init_note"]
    assert type(net.encoder).__name__ == "MobileNetV3" and net.head.out_features == 3
    assert net.head.in_features == 1024  # timm keeps MobileNetV3's conv head: wider than num_features (288)
    x = torch.rand(2, 1, 32, 32)
    ep = torch.export.export(export_plain(net), (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    x3 = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ep.module()(x3), net.eval()(x3), atol=1e-5)
    # another head on a raw timm encoder; the packaged Lite0 weights fit the raw timm name too
    assert build_network(dataclasses.replace(cfg, head="dense", head_hidden=8))[0].head[0].out_features == 8
    assert arch_info("tf_efficientnet_lite0").packaged_weights == ("efficientnet-lite0",)


def test_unknown_arch_names_it_and_suggests_close_timm_names():
    with pytest.raises(ConfigError) as exc:
        resolve_config("chirality", "tiny", {"arch": "mobilenetv3_smal_050"})
    msg = str(exc.value)
    assert "unknown arch 'mobilenetv3_smal_050'" in msg and "did you mean" in msg
    assert "mobilenetv3_small_050" in msg.split("did you mean")[1]
    with pytest.raises(UnknownArchError, match="resnet18"):
        build_network(NetworkParams(task="chirality", classes=("CW", "ACW", "other"), arch="resnet_18"))
    with pytest.raises(UnknownArchError, match="timm.list_models"):
        arch_info("qqqqqqqqqq")


def test_arch_options_are_checked_against_the_registry():
    with pytest.raises(ConfigError, match="head applies to timm encoders, not to gresnet18"):
        resolve_config("chirality", "tiny_gresnet", {"head": "dense"})
    with pytest.raises(ConfigError, match="no pretrained encoder weights exist"):
        resolve_config("chirality", "tiny_gresnet", {"encoder_weights": "file:/x.pt"})
    with pytest.raises(ConfigError, match="arch must be efficientnet_lite0 or tf_efficientnet_lite0"):
        resolve_config("chirality", "tiny", {"arch": "mobilenetv3_small_050",
                                             "encoder_weights": "package:efficientnet-lite0"})
    assert resolve_config("chirality", "tiny", {"arch": "tf_efficientnet_lite0",
                                                "encoder_weights": "package:efficientnet-lite0"})
    with pytest.raises(ConfigError, match="'encoder_checkpoint' was removed: use encoder_weights=file:PATH"):
        resolve_config("lopsided", "tiny", {"encoder_checkpoint": "/x.ckpt"})


def test_no_arch_name_comparisons_outside_the_registry():
    """Callers ask :func:`arch_info`; only the registry and the presets spell arch names."""
    import ast
    from pathlib import Path

    import galmorph

    names = set(NAMED)
    offenders = []
    for path in Path(galmorph.__file__).parent.rglob("*.py"):
        if path.name == "archs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            consts = []
            if isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith":
                consts = node.args
            for c in consts:
                values = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                if any(isinstance(v, ast.Constant) and isinstance(v.value, str)
                       and (v.value in names or v.value == "gresnet") for v in values):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
