"""Visual explanations: Grad-CAM, Grad-CAM++ and SmoothGrad, implemented with torch autograd.

Works on both kinds of loaded model:

* an ``nn.Module``: the target layer is a submodule (default: the last ``nn.Conv2d`` in
  ``named_modules`` order); its output is captured with a forward hook;
* an exported ``pt2`` graph (``torch.fx.GraphModule``, what :func:`galmorph.models.io.load_for_inference`
  returns): the target layer is a graph node (default: the last ``aten.conv2d``/``aten.convolution``
  node); a copy of the graph that also returns that node's value is built.

In both cases the gradient of the target class logit with respect to the activation is taken with
``torch.autograd.grad`` (no parameter gradients are accumulated, the model is unchanged).
Maps are ``(B, H, W)`` arrays at the input resolution, non-negative, each scaled to max 1 (an
all-zero map stays zero). The formulas follow the ``grad-cam`` package (pytorch_grad_cam), against
which the tests compare the raw ``h x w`` maps. Models with test-time views (the
chirality-equivariant wrapper runs its backbone on the image and on its mirror, and on rotations
when it has them) evaluate the target layer once per view: each view gets its own map, transformed
back to the input frame (:func:`grad_cam_views`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_CONV_TARGETS = None


def _conv_targets():
    global _CONV_TARGETS
    if _CONV_TARGETS is None:
        import torch

        _CONV_TARGETS = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default,
                         torch.ops.aten._convolution.default}
    return _CONV_TARGETS


def _is_graph(module) -> bool:
    import torch.fx

    return isinstance(module, torch.fx.GraphModule)


def conv_layers(module) -> list[str]:
    """Names of the candidate target layers, in forward order (graph node names for exported graphs,
    module names for ``nn.Module``)."""
    import torch.nn as nn

    if _is_graph(module):
        names = [n.name for n in module.graph.nodes if n.op == "call_function" and n.target in _conv_targets()]
        if names:
            return names
    return [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def default_target_layer(module) -> str:
    layers = conv_layers(module)
    if not layers:
        raise ValueError("the model has no 2-D convolution layer; pass target_layer explicitly")
    return layers[-1]


def layer_occurrences(module, target_layer: str) -> list[str]:
    """Every evaluation of ``target_layer`` in one forward pass, in forward order.

    A test-time-view model (the chirality-equivariant wrapper: image and mirror; rotations x mirror)
    runs its backbone once per view, so the same layer is evaluated once per view. For an exported
    graph these are the convolution nodes that share the target node's weight; for an
    ``nn.Module`` the forward hook sees every call (the list holds the module name once per call,
    resolved at run time)."""
    if _is_graph(module):
        nodes = {n.name: n for n in module.graph.nodes}
        if target_layer not in nodes:
            raise ValueError(f"target layer {target_layer!r} not found; candidates: {conv_layers(module)}")
        tgt = nodes[target_layer]
        if tgt.op == "call_function" and tgt.target in _conv_targets() and len(tgt.args) > 1:
            w = tgt.args[1]
            return [n.name for n in module.graph.nodes
                    if n.op == "call_function" and n.target in _conv_targets() and len(n.args) > 1 and n.args[1] is w]
        return [target_layer]
    return [target_layer]


def _forward_with_activations(module, x, target_layer: str):
    """Run the model and return ``(logits, [activation of each evaluation of target_layer])``."""
    import torch
    import torch.fx

    if _is_graph(module):
        names = layer_occurrences(module, target_layer)
        nodes = {n.name: n for n in module.graph.nodes}
        cache = module.__dict__.setdefault("_galmorph_cam_cache", {})
        gm2 = cache.get(target_layer)
        if gm2 is None:
            g = torch.fx.Graph()
            env: dict = {}
            out_node = None
            for n in module.graph.nodes:
                if n.op == "output":
                    out_node = n
                    continue
                env[n] = g.node_copy(n, lambda a: env[a])
            res = torch.fx.map_arg(out_node.args[0], lambda a: env[a])
            g.output((res, tuple(env[nodes[nm]] for nm in names)))
            gm2 = torch.fx.GraphModule(module, g)
            cache[target_layer] = gm2
        out, acts = gm2(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out, list(acts)
    mods = dict(module.named_modules())
    if target_layer not in mods:
        raise ValueError(f"target layer {target_layer!r} not found; candidates: {conv_layers(module)}")
    store: list = []

    def hook(_m, _i, o):
        store.append(o.tensor if hasattr(o, "tensor") else o)

    h = mods[target_layer].register_forward_hook(hook)
    try:
        out = module(x)
    finally:
        h.remove()
    return out, store


def _targets(logits, target_class) -> "object":
    import torch

    if target_class is None:
        return logits.argmax(dim=1)
    if isinstance(target_class, int):
        return torch.full((logits.shape[0],), target_class, dtype=torch.long)
    return torch.as_tensor(list(target_class), dtype=torch.long)


def _upsample_normalise(cam, size: tuple[int, int]) -> np.ndarray:
    import torch.nn.functional as F

    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    cam = cam.clamp_min(0)
    mx = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    cam = cam / mx
    return cam.detach().cpu().numpy()


def cam_weights(act, grad, plus_plus: bool = False, eps: float = 1e-6):
    """Channel weights ``(B, C, 1, 1)`` from the activation ``A`` and the gradient ``g = d logit / d A``.

    Grad-CAM: the spatial mean of g. Grad-CAM++ (Chattopadhay et al. 2018, eq. 19, the closed form for
    an exponential of the logit): ``alpha = g^2 / (2 g^2 + (sum_ab A_ab) g^3 + eps)`` (zero where g = 0 or
    the denominator vanishes; ``eps`` as in the ``grad-cam`` package), weights = ``sum_ij alpha ReLU(g)``.
    """
    import torch

    if not plus_plus:
        return grad.mean(dim=(2, 3), keepdim=True)
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3 + eps
    ok = (grad != 0) & (denom != 0)
    alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    return (alpha * torch.relu(grad)).sum(dim=(2, 3), keepdim=True)


# the dihedral group of the square: name -> (forward transform, inverse) on (..., H, W) tensors
def _d4():
    import torch

    def rot(k):
        return lambda t: torch.rot90(t, k, dims=(-2, -1))

    def flip(t):
        return torch.flip(t, dims=[-1])

    out = {"identity": (rot(0), rot(0)), "mirror": (flip, flip)}
    for k in range(1, 4):
        out[f"rot{90 * k}"] = (rot(k), rot(-k))
    for k in range(1, 4):
        out[f"mirror-rot{90 * k}"] = ((lambda t, k=k: rot(k)(flip(t))), (lambda t, k=k: flip(rot(-k)(t))))
    return out


def view_transforms(module, x, target_layer: str, rtol: float = 1e-4) -> list[str]:
    """The test-time view of each evaluation of ``target_layer`` (see :func:`layer_occurrences`), found
    by matching: view k applies transform T to the image when the first evaluation on ``T(x)``
    reproduces the k-th evaluation on ``x``. T runs over the dihedral group (identity, mirror,
    rotations by 90 degrees, mirror + rotations); the first evaluation is the identity view. A view
    that matches none is named ``unknown``."""
    import torch

    with torch.no_grad():
        _, acts = _forward_with_activations(module, x, target_layer)
        if len(acts) == 1:
            return ["identity"]
        names = ["unknown"] * len(acts)
        names[0] = "identity"
        for name, (fwd, _inv) in _d4().items():
            if name == "identity":
                continue
            xt = fwd(x)
            if xt.shape != x.shape:
                continue
            _, acts_t = _forward_with_activations(module, xt, target_layer)
            ref = acts_t[0]
            for k in range(1, len(acts)):
                a = acts[k]
                if names[k] == "unknown" and a.shape == ref.shape:
                    scale = float(a.abs().max().clamp_min(1e-12))
                    if float((a - ref).abs().max()) <= rtol * scale:
                        names[k] = name
        return names


def _view_inverse(name: str):
    if name == "unknown":
        return None
    return _d4()[name][1]


def grad_cam_views(module, x, target_class: int | Sequence[int] | None = None, target_layer: str | None = None,
                   plus_plus: bool = False, raw: bool = False) -> tuple[np.ndarray, list[str]]:
    """Grad-CAM (or Grad-CAM++) maps per test-time view: ``(maps (V, B, H, W), view names)``.

    Each evaluation of the target layer (one per view of a chirality-equivariant / test-time-view
    model; one for an ordinary model) gets its own map from its own activation and gradient,
    transformed back to the input frame (a mirror view's map is mirrored back, a rotated view's map
    rotated back). ``raw``: the ReLU'd ``(V, B, h, w)`` maps at the layer's resolution, before
    upsampling and scaling; otherwise upsampled to the input size and scaled to max 1.
    """
    import torch

    target_layer = target_layer or default_target_layer(module)
    names = view_transforms(module, x.detach(), target_layer) if len(layer_occurrences(module, target_layer)) > 1 \
        or not _is_graph(module) else ["identity"]
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits, acts = _forward_with_activations(module, xg, target_layer)
        for a in acts:
            if a.ndim != 4:
                raise ValueError(f"target layer {target_layer!r} output has shape {tuple(a.shape)}; need (B, C, h, w)")
        tgt = _targets(logits, target_class)
        score = logits.gather(1, tgt[:, None]).sum()
        grads = torch.autograd.grad(score, acts, allow_unused=True)
    if len(names) != len(acts):  # nn.Module: view_transforms saw the same number of calls
        names = (names + ["unknown"] * len(acts))[:len(acts)]
    maps, kept = [], []
    for a, g, nm in zip(acts, grads, names):
        a = a.detach()
        g = torch.zeros_like(a) if g is None else g.detach()
        cam = torch.relu((cam_weights(a, g, plus_plus) * a).sum(dim=1))
        inv = _view_inverse(nm)
        if inv is None:
            log.warning("Grad-CAM: a test-time view of layer %s matches no flip/rotation; its map is left out",
                        target_layer)
            continue
        cam = inv(cam)
        maps.append(cam.detach().cpu().numpy() if raw else _upsample_normalise(cam, tuple(x.shape[-2:])))
        kept.append(nm)
    return np.stack(maps), kept


def grad_cam(module, x, target_class: int | Sequence[int] | None = None, target_layer: str | None = None,
             plus_plus: bool = False, raw: bool = False) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) or, with ``plus_plus``, Grad-CAM++ (Chattopadhay et al. 2018)
    maps ``(B, H, W)`` of the batch ``x`` for ``target_class`` (default: the predicted class).

    Map = ReLU(sum_k w_k A_k) with the weights of :func:`cam_weights`. For a model with several
    test-time views the per-view maps (:func:`grad_cam_views`, each in the input frame) are summed
    before scaling. ``raw``: ``(B, h, w)`` at the layer's resolution, unscaled.
    """
    import torch

    maps, _ = grad_cam_views(module, x, target_class, target_layer, plus_plus, raw=True)
    total = torch.from_numpy(maps.sum(axis=0))
    if raw:
        return total.numpy()
    return _upsample_normalise(total, tuple(x.shape[-2:]))


def grad_cam_pp(module, x, target_class=None, target_layer: str | None = None, raw: bool = False) -> np.ndarray:
    """Grad-CAM++ maps (see :func:`grad_cam`)."""
    return grad_cam(module, x, target_class, target_layer, plus_plus=True, raw=raw)


def smoothgrad_noise(x, n_samples: int = 25, noise_level: float = 0.15, seed: int = 0):
    """The Gaussian noise SmoothGrad adds: ``(n_samples, B, C, H, W)``, sigma = ``noise_level`` x each
    image's value range, drawn from a generator seeded with ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    rng = (x.flatten(1).max(dim=1).values - x.flatten(1).min(dim=1).values).clamp_min(1e-6)
    sigma = (noise_level * rng)[:, None, None, None]
    return torch.stack([sigma * torch.randn(x.shape, generator=gen) for _ in range(n_samples)])


def smoothgrad(module, x, target_class: int | Sequence[int] | None = None, n_samples: int = 25,
               noise_level: float = 0.15, seed: int = 0, noise=None, raw: bool = False) -> np.ndarray:
    """SmoothGrad saliency (Smilkov et al. 2017): mean over the noisy copies ``x + noise[i]`` (default
    :func:`smoothgrad_noise`) of |d logit / d x|, max over channels, scaled to max 1 (``raw``: unscaled).
    Returns ``(B, H, W)``; the target class is taken on the clean image."""
    import torch

    x = x.detach()
    if noise is None:
        noise = smoothgrad_noise(x, n_samples, noise_level, seed)
    with torch.no_grad():
        tgt = _targets(module(x), target_class)
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for eps in noise:
            xn = (x + eps).requires_grad_(True)
            score = module(xn).gather(1, tgt[:, None]).sum()
            (g,) = torch.autograd.grad(score, xn)
            total += g.abs()
    sal = (total / len(noise)).amax(dim=1)
    if raw:
        return sal.cpu().numpy()
    mx = sal.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (sal / mx).cpu().numpy()


# --------------------------------------------------------------------------------------------
# picking examples
# --------------------------------------------------------------------------------------------
def select_examples(pred: pd.DataFrame, classes: Sequence[str], per_class: int = 2) -> pd.DataFrame:
    """The most confident correct and the most confident wrong predictions of each class.

    ``pred``: output of :func:`galmorph.scoring.inference.predict_manifest` (needs ``label``). Returns rows
    with ``kind`` (correct/wrong), ``true_class``, ``pred``, ``p_pred`` and ``row`` (position in
    ``pred``); fewer rows where a class has fewer examples.
    """
    ok = pred["pred"].notna() & pred["label"].notna()
    d = pred[ok].copy()
    d["row"] = np.flatnonzero(ok.to_numpy())
    out = []
    for c in classes:
        for kind, sel in (("correct", (d["label"] == c) & (d["pred"] == c)),
                          ("wrong", (d["label"] == c) & (d["pred"] != c))):
            top = d[sel].sort_values("p_pred", ascending=False).head(per_class)
            for _, r in top.iterrows():
                out.append({"object_id": r["object_id"], "kind": kind, "true_class": c, "pred": r["pred"],
                            "p_pred": float(r["p_pred"]), "row": int(r["row"])})
    return pd.DataFrame(out, columns=["object_id", "kind", "true_class", "pred", "p_pred", "row"])


def explain_examples(module, images, examples: pd.DataFrame, classes: Sequence[str],
                     target_layer: str | None = None, smoothgrad_samples: int = 16) -> dict[str, np.ndarray]:
    """Grad-CAM, Grad-CAM++ and SmoothGrad maps of the selected examples for their *predicted* class.

    ``images``: tensor ``(len(examples), C, S, S)`` in the order of ``examples``. Models with several
    test-time views (chirality-equivariant) also get one Grad-CAM / Grad-CAM++ map per view, in the
    input frame, as ``gradcam[<view>]`` / ``gradcampp[<view>]``; ``views`` lists the view names."""
    classes = [str(c) for c in classes]
    tgt = [classes.index(str(p)) for p in examples["pred"]]
    layers = conv_layers(module)
    out: dict = {"smoothgrad": smoothgrad(module, images, tgt, n_samples=smoothgrad_samples)}
    if target_layer is None and not layers:
        log.warning("the model has no convolution layer: Grad-CAM skipped, SmoothGrad only")
        out["target_layer"] = None
        out["skipped"] = "no convolution layer for Grad-CAM"
        return out
    layer = target_layer or layers[-1]
    for key, pp in (("gradcam", False), ("gradcampp", True)):
        raw, views = grad_cam_views(module, images, tgt, layer, plus_plus=pp, raw=True)
        import torch

        out[key] = _upsample_normalise(torch.from_numpy(raw.sum(axis=0)), tuple(images.shape[-2:]))
        if len(views) > 1:
            for v, r in zip(views, raw):
                out[f"{key}[{v}]"] = _upsample_normalise(torch.from_numpy(r), tuple(images.shape[-2:]))
        out["views"] = views
    out["target_layer"] = layer
    return out
