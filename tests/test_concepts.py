"""camlens.concepts: Deep Feature Factorization against scikit-learn and pytorch-grad-cam, known concepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camlens
from camlens import maps
from camlens.concepts import factorize
from conftest import hook_count


def test_nmf_recovers_an_exact_factorisation() -> None:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.rand(20, 3, generator=gen)
    h0 = torch.rand(3, 50, generator=gen)
    w, h, err = maps.nmf(w0 @ h0, 3, iters=300, tol=0)
    assert err < 1e-3
    torch.testing.assert_close(w @ h, w0 @ h0, rtol=0, atol=1e-2)
    assert bool((w >= 0).all() and (h >= 0).all())
    # the error is the stated one
    assert err == pytest.approx(float((w0 @ h0 - w @ h).norm() / (w0 @ h0).norm()), rel=1e-4)


def test_nmf_fits_as_well_as_scikit_learn() -> None:
    from sklearn.decomposition import NMF

    gen = torch.Generator().manual_seed(1)
    v = torch.rand(64, 120, generator=gen) ** 2
    for rank in (2, 6):
        _, _, ours = maps.nmf(v, rank)
        model = NMF(n_components=rank, init="random", random_state=0, max_iter=200)
        w = model.fit_transform(v.double().numpy())
        theirs = np.linalg.norm(v.double().numpy() - w @ model.components_) / float(v.norm())
        assert ours <= theirs * 1.01 + 1e-6, (rank, ours, theirs)


def _layer4(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with camlens.LayerCapture([("layer4", model.layer4)], grad=False) as cap, torch.no_grad():
        model(x)
    return cap.activations["layer4"]


def test_dff_fits_resnet_activations_as_well_as_pytorch_grad_cam() -> None:
    import warnings

    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 128, 128)
    acts = _layer4(model, x)  # (2, 512, 4, 4)
    concepts = factorize(model, x, layer="layer4", n=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: "Maximum number of iterations reached"
        their_concepts, their_maps = dff(acts.numpy().copy(), n_components=5)
    mat = acts.transpose(0, 1).reshape(512, -1).double().numpy()
    shifted = mat - mat.min(axis=1, keepdims=True)
    w = their_concepts - mat.min(axis=1, keepdims=True)
    theirs = np.linalg.norm(shifted - w @ their_maps.transpose(1, 0, 2, 3).reshape(5, -1))
    theirs /= np.linalg.norm(shifted)
    assert concepts.error <= theirs * 1.01 + 1e-6
    # the reported error is the reconstruction's, from what the result holds
    offset = torch.from_numpy(mat.min(axis=1))
    w_ours = concepts.embeddings.double().T - offset[:, None]
    rebuilt = w_ours @ concepts.raw.transpose(0, 1).reshape(5, -1).double()
    err = float((torch.from_numpy(shifted) - rebuilt).norm() / np.linalg.norm(shifted))
    assert concepts.error == pytest.approx(err, rel=1e-4)
    # the same shapes and conventions as pytorch-grad-cam: embeddings W + offset, maps per image
    assert concepts.embeddings.shape == (5, 512) and concepts.raw.shape == (2, 5, 4, 4)
    assert concepts.maps.shape == (2, 5, 128, 128)
    assert float(concepts.maps.amin()) == 0 and float(concepts.maps.amax()) == 1


class KnownConcepts(nn.Module):
    """The input *is* the layer's output: two parts with known channel profiles, a GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[5.0, 5, 0, 0], [0, 0, 5, 5], [0, 0, 0, 0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_known_concepts_are_found_with_their_classes() -> None:
    a = torch.tensor([1.0, 0.5, 0.0, 0.0])  # a part that reads as class 0
    b = torch.tensor([0.0, 0.0, 1.0, 2.0])  # a part that reads as class 1
    x = torch.zeros(2, 4, 8, 8)
    x[0, :, :4, :4] = a[:, None, None]
    x[0, :, 4:, 4:] = b[:, None, None]
    x[1, :, 2:6, :3] = 2 * a[:, None, None]
    model = KnownConcepts().eval()
    c = factorize(model, x, layer="features", n=2, class_names=["round", "square", "none"])
    assert c.error < 1e-4
    # match each found concept to a or b by its embedding's direction
    unit = c.embeddings / c.embeddings.norm(dim=1, keepdim=True)
    which = [
        int(torch.stack([unit[j] @ a / a.norm(), unit[j] @ b / b.norm()]).argmax()) for j in (0, 1)
    ]
    assert sorted(which) == [0, 1]
    for j, part in enumerate(which):
        cos = float(unit[j] @ (a if part == 0 else b)) / float((a if part == 0 else b).norm())
        assert cos > 0.999
        assert c.top_classes is not None and int(c.top_classes[j, 0]) == part
        region = (x.abs().sum(1) > 0) & (x[:, 0 if part == 0 else 2] > 0)
        assert bool((c.maps[:, j] > 0.5)[region].all()) and bool(
            (c.maps[:, j] < 0.5)[~region].all()
        )
    assert "round" in c.labels()[which.index(0)] and "square" in c.labels()[which.index(1)]
    # the dominant concept of each pixel
    assert int(c.dominant()[0, 0, 0]) == which.index(0) and int(
        c.dominant()[0, 7, 7]
    ) == which.index(1)


def test_concept_overlay_colours_each_concept() -> None:
    model = KnownConcepts().eval()
    x = torch.zeros(1, 4, 8, 8)
    x[0, 0, :4] = 1.0
    x[0, 2, 4:] = 1.0
    c = factorize(model, x, layer="features", n=2)
    images = torch.full((1, 3, 8, 8), 0.5)
    plain = c.overlay(images, legend=False)[0]
    assert plain.size == (8, 8)
    px = np.asarray(plain).astype(float)
    assert not np.allclose(px[0, 0], px[7, 7])  # the two halves have their own colours
    legend = c.overlay(images)[0]
    assert legend.size[0] == 8 and legend.size[1] > 8
    with pytest.raises(ValueError, match="one each"):
        c.overlay(images.repeat(2, 1, 1, 1))


@pytest.mark.parametrize("dims", [1, 3])
def test_factorize_any_number_of_spatial_axes(dims: int) -> None:
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[dims]
    model = nn.Sequential(
        conv(2, 6, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(6, 3)
    )
    x = torch.rand(2, 2, *([8] * dims))
    c = factorize(model.eval(), x, n=3)
    assert c.layer == "1"
    assert c.maps.shape == (2, 3, *([8] * dims)) and c.raw.shape == (2, 3, *([8] * dims))
    assert c.logits is not None and c.logits.shape == (3, 3)
    assert hook_count(model) == 0


def test_factorize_refuses_what_it_cannot_do() -> None:
    model = KnownConcepts().eval()
    x = torch.rand(1, 4, 4, 4)
    with pytest.raises(ValueError, match="n must be"):
        factorize(model, x, layer="features", n=5)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        factorize(model, bad, layer="features", n=2)
    none = factorize(model, x, layer="features", n=2, classifier=None)
    assert none.logits is None and none.labels() == ["concept 0", "concept 1"]
    assert all(p.grad is None for p in model.parameters()) and hook_count(model) == 0
    # a model that fails on the input: one ModelError, with the automatic layer as with a given one
    wrong = torch.rand(1, 3, 4, 4)  # KnownConcepts takes 4 channels
    for layer in (None, "features"):
        with pytest.raises(camlens.ModelError, match=r"shape \(1, 3, 4, 4\)"):
            factorize(model, wrong, layer=layer, n=2)
    assert hook_count(model) == 0
