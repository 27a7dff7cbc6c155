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
all-zero map stays zero).
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


def _forward_with_activation(module, x, target_layer: str):
    """Run the model and return ``(logits, activation)`` of ``target_layer``."""
    import torch
    import torch.fx

    if _is_graph(module):
        nodes = {n.name: n for n in module.graph.nodes}
        if target_layer in nodes:
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
                g.output((res, env[nodes[target_layer]]))
                gm2 = torch.fx.GraphModule(module, g)
                cache[target_layer] = gm2
            out, act = gm2(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out, act
    mods = dict(module.named_modules())
    if target_layer not in mods:
        raise ValueError(f"target layer {target_layer!r} not found; candidates: {conv_layers(module)}")
    store = {}

    def hook(_m, _i, o):
        store["act"] = o.tensor if hasattr(o, "tensor") else o

    h = mods[target_layer].register_forward_hook(hook)
    try:
        out = module(x)
    finally:
        h.remove()
    return out, store["act"]


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


def grad_cam(module, x, target_class: int | Sequence[int] | None = None, target_layer: str | None = None,
             plus_plus: bool = False) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) or, with ``plus_plus``, Grad-CAM++ (Chattopadhay et al. 2018)
    maps ``(B, H, W)`` of the batch ``x`` for ``target_class`` (default: the predicted class).

    Grad-CAM: channel weights = spatial mean of d logit / d A; map = ReLU(sum_k w_k A_k).
    Grad-CAM++: pixel weights alpha = g^2 / (2 g^2 + sum_ij A g^3) (the closed form for an
    exponential of the logit), channel weights = sum_ij alpha ReLU(g).
    """
    import torch

    target_layer = target_layer or default_target_layer(module)
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits, act = _forward_with_activation(module, x, target_layer)
        if act.ndim != 4:
            raise ValueError(f"target layer {target_layer!r} output has shape {tuple(act.shape)}; need (B, C, h, w)")
        tgt = _targets(logits, target_class)
        score = logits.gather(1, tgt[:, None]).sum()
        (g,) = torch.autograd.grad(score, act)
    act, g = act.detach(), g.detach()
    if plus_plus:
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + (act * g3).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(g2))
        w = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    else:
        w = g.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * act).sum(dim=1))
    return _upsample_normalise(cam, tuple(x.shape[-2:]))


def grad_cam_pp(module, x, target_class=None, target_layer: str | None = None) -> np.ndarray:
    """Grad-CAM++ maps (see :func:`grad_cam`)."""
    return grad_cam(module, x, target_class, target_layer, plus_plus=True)


def smoothgrad(module, x, target_class: int | Sequence[int] | None = None, n_samples: int = 25,
               noise_level: float = 0.15, seed: int = 0) -> np.ndarray:
    """SmoothGrad saliency (Smilkov et al. 2017): mean over ``n_samples`` noisy copies (Gaussian,
    sigma = ``noise_level`` x the image's value range) of |d logit / d x|, max over channels,
    scaled to max 1. Returns ``(B, H, W)``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    with torch.no_grad():
        tgt = _targets(module(x), target_class)
    rng = (x.flatten(1).max(dim=1).values - x.flatten(1).min(dim=1).values).clamp_min(1e-6)
    sigma = (noise_level * rng)[:, None, None, None]
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for _ in range(n_samples):
            xn = (x + sigma * torch.randn(x.shape, generator=gen)).requires_grad_(True)
            score = module(xn).gather(1, tgt[:, None]).sum()
            (g,) = torch.autograd.grad(score, xn)
            total += g.abs()
    sal = (total / n_samples).amax(dim=1)
    mx = sal.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (sal / mx).cpu().numpy()


# --------------------------------------------------------------------------------------------
# picking examples
# --------------------------------------------------------------------------------------------
def select_examples(pred: pd.DataFrame, classes: Sequence[str], per_class: int = 2) -> pd.DataFrame:
    """The most confident correct and the most confident wrong predictions of each class.

    ``pred``: output of :func:`galmorph.inference.predict_manifest` (needs ``label``). Returns rows
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

    ``images``: tensor ``(len(examples), C, S, S)`` in the order of ``examples``."""
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
    out["gradcam"] = grad_cam(module, images, tgt, layer)
    out["gradcampp"] = grad_cam_pp(module, images, tgt, layer)
    out["target_layer"] = layer
    return out
