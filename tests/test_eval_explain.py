"""Grad-CAM / Grad-CAM++ / SmoothGrad on a synthetic toy with a known discriminative region, on both an
nn.Module and its exported (pt2) graph."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from galmorph.evaluation.explain import (conv_layers, default_target_layer, explain_examples, grad_cam, grad_cam_pp,
                                         select_examples, smoothgrad)

S = 32


class BlobNet(nn.Module):
    """Class 1 = a bright blob in the *red* channel; a green blob is a distractor the net ignores.

    conv1: a 5x5 positive red-only detector (minus a constant), ReLU; conv2: 1x1 pass-through (the
    last conv); global average pool; logits = [0, w * pooled]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 5, padding=2)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0] = 1.0 / 25  # red detector
            self.conv1.weight[1, 1] = 1.0 / 25  # green detector, unused downstream
            self.conv1.bias.fill_(-0.3)
            self.conv2.weight.zero_()
            self.conv2.weight[0, 0, 0, 0] = 1.0
            self.conv2.weight[1, 1, 0, 0] = 1.0
            self.conv2.bias.zero_()
            self.fc.weight.zero_()
            self.fc.weight[1, 0] = 100.0  # only the red feature counts
            self.fc.bias[:] = torch.tensor([0.1, 0.0])

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x))))).flatten(1))


def _toy(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.1, (n, 3, S, S)).astype(np.float32)
    yy, xx = np.mgrid[0:S, 0:S]
    red_centres, green_centres = [], []
    for i in range(n):
        rc = rng.integers(6, S - 6, 2)
        while True:
            gc = rng.integers(6, S - 6, 2)
            if np.hypot(*(gc - rc)) > 12:
                break
        x[i, 0] += 0.9 * np.exp(-((yy - rc[0]) ** 2 + (xx - rc[1]) ** 2) / (2 * 2.0 ** 2))
        x[i, 1] += 0.9 * np.exp(-((yy - gc[0]) ** 2 + (xx - gc[1]) ** 2) / (2 * 2.0 ** 2))
        red_centres.append(rc)
        green_centres.append(gc)
    return torch.from_numpy(x.clip(0, 1)), np.array(red_centres), np.array(green_centres)


def _mass_near(m, c, r=5):
    yy, xx = np.mgrid[0:S, 0:S]
    return m[np.hypot(yy - c[0], xx - c[1]) <= r].sum() / max(m.sum(), 1e-12)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_gradcam_highlights_the_discriminative_blob(method):
    net = BlobNet().eval()
    x, red, green = _toy()
    assert (net(x).argmax(1) == 1).all()  # the toy is detected
    fn = grad_cam if method == "gradcam" else grad_cam_pp
    maps = fn(net, x, target_class=1)
    assert maps.shape == (len(x), S, S) and maps.dtype in (np.float32, np.float64)
    assert (maps >= 0).all() and np.allclose(maps.max(axis=(1, 2)), 1.0)
    for i in range(len(x)):
        peak = np.unravel_index(maps[i].argmax(), maps[i].shape)
        assert np.hypot(*(np.array(peak) - red[i])) <= 3, (i, peak, red[i])
        assert _mass_near(maps[i], red[i]) > 0.8
        assert _mass_near(maps[i], green[i]) < 0.05


def test_smoothgrad_and_exported_graph_agree():
    net = BlobNet().eval()
    x, red, green = _toy(n=4, seed=1)
    sal = smoothgrad(net, x, target_class=1, n_samples=12, noise_level=0.05)
    assert sal.shape == (4, S, S) and (sal >= 0).all()
    for i in range(4):
        assert _mass_near(sal[i], red[i], r=6) > _mass_near(sal[i], green[i], r=6)
    gm = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    assert conv_layers(net) == ["conv1", "conv2"] and default_target_layer(net) == "conv2"
    assert len(conv_layers(gm)) == 2
    np.testing.assert_allclose(grad_cam(gm, x, 1), grad_cam(net, x, 1, "conv2"), atol=1e-6)
    np.testing.assert_allclose(grad_cam_pp(gm, x, 1), grad_cam_pp(net, x, 1, "conv2"), atol=1e-6)
    np.testing.assert_allclose(grad_cam(gm, x, 1, conv_layers(gm)[0]), grad_cam(net, x, 1, "conv1"), atol=1e-6)
    np.testing.assert_allclose(smoothgrad(gm, x, 1, n_samples=4), smoothgrad(net, x, 1, n_samples=4), atol=1e-5)
    # the model is unchanged and no parameter gradients were accumulated
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="not found"):
        grad_cam(net, x, 1, "nope")


def test_select_examples_and_explain():
    pred = pd.DataFrame({"object_id": list("abcdef"), "label": ["x", "x", "x", "y", "y", "y"],
                         "pred": ["x", "x", "y", "y", "x", "y"], "p_pred": [0.9, 0.6, 0.8, 0.7, 0.95, 0.99]})
    ex = select_examples(pred, ["x", "y"], per_class=1)
    got = {(r.kind, r.true_class): r.object_id for r in ex.itertuples()}
    assert got == {("correct", "x"): "a", ("wrong", "x"): "c", ("correct", "y"): "f", ("wrong", "y"): "e"}
    net = BlobNet().eval()
    x, _, _ = _toy(n=len(ex))
    maps = explain_examples(net, x, ex.assign(pred=["y"] * len(ex)), ["x", "y"], smoothgrad_samples=4)
    assert maps["target_layer"] == "conv2" and maps["gradcam"].shape == (len(ex), S, S)
