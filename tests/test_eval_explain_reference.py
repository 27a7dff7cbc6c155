"""Grad-CAM / Grad-CAM++ against the `grad-cam` package (pytorch_grad_cam) on the raw h x w maps, SmoothGrad
against an independent per-image autograd loop with the same injected noise, and per-view maps of a
chirality-equivariant model (eager and exported)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from galmorph.evaluation.explain import (conv_layers, grad_cam, grad_cam_views, smoothgrad, smoothgrad_noise,
                                         view_transforms)
from test_eval_support import ChiralityCE, TinyCNN

S = 24


class PoolNet(nn.Module):
    """A small random CNN whose last conv is followed by ReLU and max-pooling, so that the gradient
    varies across the map within a channel: there the Grad-CAM++ formulas (sum A) g^3 and sum(A g^3)
    differ."""

    def __init__(self, seed=0, n_out=3):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4, n_out)
        with torch.no_grad():
            self.fc.weight.mul_(20)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        h = nn.functional.adaptive_max_pool2d(h, 2)
        return self.fc(h.flatten(1))


def _x(n=4, seed=0, s=S):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, s, s), generator=g)


def _reference_raw(cls, model, layer, x, targets):
    """ReLU'd raw CAM of the reference package, before its min-max scaling and resize."""
    cam = cls(model=model, target_layers=[layer])
    try:
        outputs = cam.activations_and_grads(x)
        model.zero_grad()
        loss = sum(ClassifierOutputTarget(int(t))(o) for t, o in zip(targets, outputs))
        loss.backward()
        a = cam.activations_and_grads.activations[-1].cpu().numpy()
        g = cam.activations_and_grads.gradients[-1].cpu().numpy()
        raw = cam.get_cam_image(x, layer, None, a, g, False)
    finally:
        cam.activations_and_grads.release()
    model.zero_grad()
    return np.maximum(raw, 0)


def _old_gradcampp_raw(model, layer, x, targets):
    """The formula the code used before: alpha = g^2 / (2 g^2 + sum(A g^3))."""
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    out = model(x)
    h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out.gather(1, torch.as_tensor(targets)[:, None]).sum(), a)
    a, g = a.detach(), g.detach()
    denom = 2 * g ** 2 + (a * g ** 3).sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(denom != 0, g ** 2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0 * g)
    w = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((w * a).sum(1)).numpy()


def _scaled(m):
    return m / np.maximum(m.max(axis=(-2, -1), keepdims=True), 1e-12)


@pytest.mark.parametrize("exported", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcam_and_gradcampp_equal_the_reference_package(seed, exported):
    net = PoolNet(seed).eval()
    x = _x(seed=seed)
    targets = net(x).argmax(1).tolist()
    model = net
    if exported:
        model = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    layer = conv_layers(model)[-1]
    for cls, pp in ((GradCAM, False), (GradCAMPlusPlus, True)):
        ref = _reference_raw(cls, net, net.c2, x, targets)
        ours = grad_cam(model, x, targets, layer, plus_plus=pp, raw=True)
        assert ours.shape == ref.shape == (4, S, S)
        assert ref.max() > 0
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.max())
    # this model tells the two Grad-CAM++ formulas apart: the old one is far from the reference
    ref = _reference_raw(GradCAMPlusPlus, net, net.c2, x, targets)
    old = _old_gradcampp_raw(net, net.c2, x, targets)
    assert np.abs(_scaled(old) - _scaled(ref)).max() > 0.05


def _smoothgrad_reference(model, x, targets, noise):
    """Per image and per noise sample: |d logit_t / d x| by a plain backward pass; mean, max over channels."""
    out = np.zeros((x.shape[0], x.shape[2], x.shape[3]))
    for b in range(x.shape[0]):
        acc = torch.zeros_like(x[b])
        for eps in noise:
            xi = (x[b] + eps[b]).detach()[None].requires_grad_(True)
            model(xi)[0, targets[b]].backward()
            acc += xi.grad[0].abs()
        out[b] = (acc / len(noise)).amax(dim=0).numpy()
    return out


@pytest.mark.parametrize("exported", [False, True])
def test_smoothgrad_equals_reference_with_the_same_noise(exported):
    net = PoolNet(2).eval()
    x = _x(n=3, seed=5)
    targets = net(x).argmax(1).tolist()
    noise = smoothgrad_noise(x, n_samples=6, noise_level=0.1, seed=7)
    assert torch.equal(noise, smoothgrad_noise(x, n_samples=6, noise_level=0.1, seed=7))  # seeded
    ref = _smoothgrad_reference(net, x, targets, noise)
    model = net if not exported else torch.export.export(
        net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    ours = smoothgrad(model, x, targets, noise=noise, raw=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)
    # the seeded default draws the same noise
    np.testing.assert_allclose(smoothgrad(model, x, targets, n_samples=6, noise_level=0.1, seed=7), _scaled(ref),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("exported", [False, True])
def test_chirality_equivariant_model_one_map_per_view(exported):
    ce = ChiralityCE(seed=3).eval()
    x = _x(n=3, seed=11, s=32)
    model = ce
    if exported:
        model = torch.export.export(ce, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    layer = conv_layers(model)[-1]  # the last conv belongs to the mirrored pass in the exported graph
    assert view_transforms(model, x, layer) == ["identity", "mirror"]
    backbone = ce.net
    blayer = backbone.features[3]
    for pp, cls in ((False, GradCAM), (True, GradCAMPlusPlus)):
        # CW = backbone output 0 on the image: the identity view carries the whole map, the mirror view none
        maps, views = grad_cam_views(model, x, 0, layer, plus_plus=pp, raw=True)
        assert views == ["identity", "mirror"] and maps.shape[:2] == (2, 3)
        ref_id = _reference_raw(cls, backbone, blayer, x, [0, 0, 0])
        assert ref_id.max() > 0
        np.testing.assert_allclose(maps[0], ref_id, rtol=1e-4, atol=1e-5 * ref_id.max())
        assert np.abs(maps[1]).max() == 0
        # ACW = backbone output 0 on the mirror image: the map comes from the mirror view, mirrored back
        maps, _ = grad_cam_views(model, x, 1, layer, plus_plus=pp, raw=True)
        ref_m = _reference_raw(cls, backbone, blayer, torch.flip(x, dims=[3]), [0, 0, 0])
        assert np.abs(maps[0]).max() == 0
        np.testing.assert_allclose(maps[1], ref_m[..., ::-1], rtol=1e-4, atol=1e-5 * ref_m.max())
    # equivariance in the input frame: the ACW map of the mirror image is the mirrored CW map of the image
    cw = grad_cam(model, x, 0, layer)
    acw_m = grad_cam(model, torch.flip(x, dims=[3]), 1, layer)
    assert cw.max() == pytest.approx(1.0)  # not the all-zero map of the mirrored pass alone
    np.testing.assert_allclose(acw_m, cw[..., ::-1], atol=1e-5)


def test_rotation_views_are_found_and_mapped_back():
    """A test-time-view model with 90-degree rotations and mirrors: every view is identified and its map
    rotated back into the input frame."""

    class Rot4(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyCNN(2, seed=4)

        def forward(self, x):
            outs = [self.net(torch.rot90(x, k, dims=(2, 3))) for k in range(4)]
            return torch.stack(outs, 0).mean(0)

    m = Rot4().eval()
    x = _x(n=2, seed=3, s=16)
    layer = conv_layers(m)[-1]
    assert view_transforms(m, x, layer) == ["identity", "rot90", "rot180", "rot270"]
    maps, _ = grad_cam_views(m, x, 0, layer, raw=True)
    # the view-k map of x equals the identity-view map of rot90^k(x), rotated back by -k
    for k in range(1, 4):
        mk, _ = grad_cam_views(m, torch.rot90(x, k, dims=(2, 3)), 0, layer, raw=True)
        np.testing.assert_allclose(maps[k], np.rot90(mk[0], -k, axes=(1, 2)), rtol=1e-4, atol=1e-6)


def test_chirality_views_model_maps_per_view_in_the_input_frame():
    """The exported 8-view chirality model (models.chirality.ChiralityViews: 4 rotations x mirror, what
    load_for_inference returns for tta_views=8): every view is identified, each map is taken back to the
    input frame, and the combined map follows the model's symmetries -- a 90-degree rotation of the image
    rotates the map, a mirror turns the CW map into the ACW map of the mirror image."""
    from galmorph.models.chirality import ChiralityViews

    net = ChiralityViews(TinyCNN(3, seed=7), views=8).eval()
    x = _x(n=2, seed=4, s=16)
    gm = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    layer = conv_layers(gm)[-1]
    views = view_transforms(gm, x, layer)
    assert len(views) == 8 and len(set(views)) == 8 and "unknown" not in views and views[0] == "identity"
    maps, names = grad_cam_views(gm, x, 0, layer, raw=True)
    assert names == views and maps.shape[:2] == (8, 2) and maps.max() > 0
    # each view's map = the identity-view map of the image that view sees, taken back by the inverse transform
    # (a mirrored view's CW logit is the backbone's ACW output: on the mirror image it is the ACW map)
    from galmorph.evaluation.explain import _d4

    for v, name in enumerate(names):
        fwd, inv = _d4()[name]
        mv, _ = grad_cam_views(gm, fwd(x), 1 if name.startswith("mirror") else 0, layer, raw=True)
        np.testing.assert_allclose(maps[v], inv(torch.from_numpy(mv[0])).numpy(), rtol=1e-4, atol=1e-6 * maps.max())
    cw = grad_cam(gm, x, 0, layer, raw=True)
    cw_rot = grad_cam(gm, torch.rot90(x, 1, dims=(2, 3)), 0, layer, raw=True)
    np.testing.assert_allclose(cw_rot, np.rot90(cw, 1, axes=(1, 2)), rtol=1e-4, atol=1e-6 * cw.max())
    acw_m = grad_cam(gm, torch.flip(x, dims=[3]), 1, layer, raw=True)
    np.testing.assert_allclose(acw_m, cw[..., ::-1], rtol=1e-4, atol=1e-6 * cw.max())
