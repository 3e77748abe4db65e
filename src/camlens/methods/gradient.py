"""The gradient family: each method is its formula from :mod:`camlens.maps`, nothing more."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods import _options as opt
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = [
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RefineCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]


@register("gradcam", aliases=("grad-cam",))
class GradCAM(BaseCAM):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391).

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big), \quad
              \alpha^c_k = \frac{1}{Z}\sum_i \frac{\partial y^c}{\partial A^k_i}

    ``y^c`` is the pre-softmax score. For a GAP + linear head, ``alpha`` is the classifier weight divided
    by ``Z`` and the map equals CAM / Z.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> res = GradCAM(net, layer="1")(torch.rand(2, 3, 8, 8), target=0)
        >>> res.maps.shape, res.raw.shape, res.layer
        (torch.Size([2, 8, 8]), torch.Size([2, 8, 8]), '1')
    """

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.gradcam_weights(grads)


@register("hirescam", aliases=("hires-cam",))
class HiResCAM(BaseCAM):
    r"""HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891): element-wise gradient x activation.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k} \odot A^k\Big)

    Equals Grad-CAM when the head after the layer is GAP + linear.
    """

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.hirescam_terms(acts, grads)


@register("gradcam++", aliases=("gradcampp", "gradcamplusplus", "grad-cam++"))
class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (Chattopadhay et al., WACV 2018, https://arxiv.org/abs/1710.11063).

    Channel weights are positive gradients weighted by the closed-form ``alpha`` of the paper's eq. 19;
    see :func:`camlens.maps.gradcampp_weights`.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.gradcampp_weights(acts, grads)


@register("xgradcam", aliases=("xgrad-cam",))
class XGradCAM(BaseCAM):
    r"""XGrad-CAM (Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312).

    Gradients averaged with the channel's normalised activations as weights; see
    :func:`camlens.maps.xgradcam_weights`.
    """

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.xgradcam_weights(acts, grads)


@register("layercam", aliases=("layer-cam",))
class LayerCAM(BaseCAM):
    r"""LayerCAM (Jiang et al., IEEE TIP 2021): positive gradients weight activations element-wise.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y^c}{\partial A^k}\big) \odot A^k\Big)

    Works well on shallow layers; combine several with ``layer=[...]``.
    """

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.layercam_terms(acts, grads)


@register("gradcam-elementwise", aliases=("gradcamelementwise", "grad-cam-elementwise"))
class GradCAMElementWise(BaseCAM):
    r"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``): ReLU of each ``G * A``, summed.

    .. math:: L^c = \sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k} \odot A^k\Big)

    Like HiResCAM, but each product is clipped before the sum, so negative evidence in one channel
    cannot cancel positive evidence in another. No paper; the formula is pytorch-grad-cam's
    (https://github.com/jacobgil/pytorch-grad-cam), and the maps agree with it. See :func:`camlens.maps.elementwise_terms`. ``eigen_smooth`` takes the first
    principal component of the clipped products, as pytorch-grad-cam does.
    """

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.elementwise_terms(acts, grads)


@register("eigengradcam", aliases=("eigen-grad-cam", "eigen-gradcam"))
class EigenGradCAM(BaseCAM):
    r"""Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``): the principal component of ``G * A``.

    .. math:: M = (T - \bar{T}) \, v_1, \qquad T^k_i = \frac{\partial y^c}{\partial A^k_i} A^k_i

    Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299) applied to HiResCAM's
    class-specific terms instead of the bare activations: :func:`camlens.maps.eigencam_map` of
    :func:`camlens.maps.hirescam_terms`, then ReLU. pytorch-grad-cam leaves the component's sign to
    its SVD; camlens chooses it so that the map correlates with the summed terms (the HiResCAM map),
    which makes the counterfactual map the ReLU of the negated one.
    """

    principal_component = True

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return maps.hirescam_terms(acts, grads)


@register("shapleycam", aliases=("shapley-cam",))
class ShapleyCAM(BaseCAM):
    r"""ShapleyCAM (Cai 2025, https://arxiv.org/abs/2501.06261): gradient minus half the Hessian-vector product.

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big), \qquad
              w^c_k = \frac{1}{Z}\sum_i \Big(\frac{\partial y^c}{\partial A^k_i}
              - \tfrac12 \big(\nabla^2_A y^c\, A\big)^k_i\Big)

    ``A \odot (G - \frac12 H A)`` is the second-order estimate of each activation's Shapley value
    (:func:`camlens.maps.shapleycam_weights`); the weights are its spatial mean, as in
    pytorch-grad-cam's ``ShapleyCAM`` (no options, as there). The Hessian-vector product comes from
    a double backward through the head after the layer only (the fast path,
    :func:`camlens.capture.layer_gradients_and_hvp`); pytorch-grad-cam builds the double-backward
    graph of the whole network from the input. For the logits of a ReLU network the Hessian at the
    layer is zero almost everywhere and the map equals Grad-CAM's; it differs for targets with
    curvature, such as a softmax probability (``target=lambda out: out.softmax(1)[:, c]``) or the
    paper's ReST target.
    """

    needs_hvp = True

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None and ctx.hvp is not None
        return maps.shapleycam_weights(grads, ctx.hvp)


@register(
    "smoothgradcam++",
    aliases=("smoothgradcampp", "smooth-gradcam++", "smooth-grad-cam++", "smoothgradcamplusplus"),
)
class SmoothGradCAMPlusPlus(BaseCAM):
    r"""Smooth Grad-CAM++ (Omeiza et al. 2019, https://arxiv.org/abs/1908.01224).

    Grad-CAM++ whose derivatives are averaged over ``num_samples`` noisy copies of the input,
    ``x + \epsilon_m`` with ``\epsilon_m \sim \mathcal{N}(0, \mathrm{std}^2)`` (SmoothGrad):

    .. math::
        \alpha^{kc}_{i} = \frac{D^{(2)}_{k,i}}{2 D^{(2)}_{k,i} + \sum_a A^k_a D^{(3)}_{k,i}},
        \quad w^c_k = \sum_i \alpha^{kc}_i \mathrm{ReLU}\big(D^{(1)}_{k,i}\big), \quad
        D^{(p)} = \frac1n \sum_m \Big(\frac{\partial y^c}{\partial A}(x + \epsilon_m)\Big)^p

    with ``A`` the clean input's activations (:func:`camlens.maps.smooth_gradcampp_weights`). The
    numerator is ``D^{(2)}`` (torchcam's correction of the paper's ``D^{(1)}``) and the ReLU is of the
    averaged gradient (torchcam uses the last noisy copy's): with ``std=0`` the method is exactly
    Grad-CAM++. Defaults are torchcam's (``num_samples=4``, ``std=0.3``, in the input's units).

    The noise is drawn from a generator seeded with ``seed`` on every call, one ``(C, *spatial)``
    draw per copy shared by every sample of the batch: maps are reproducible, and a sample's map
    does not depend on the batch it comes in. Each copy costs one forward and one backward of the
    head (the fast path at the layer).

    Args:
        num_samples: noisy copies of the input.
        std: standard deviation of the Gaussian noise, in the input's units.
        seed: seed of the noise generator.
    """

    num_samples: int
    std: float
    seed: int

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        num_samples: int = 4,
        std: float = 0.3,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.num_samples = opt.positive_int("num_samples", num_samples, "noisy copies")
        self.std = opt.non_negative("std", std, "the noise's standard deviation")
        self.seed = opt.seed(seed)

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert ctx.gradients_at is not None
        x = ctx.x
        dtype = x.dtype if x.is_floating_point() else torch.float32
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        d1, d2, d3 = (torch.zeros_like(acts) for _ in range(3))
        for _ in range(self.num_samples):
            noise = torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=dtype)
            _, g = ctx.gradients_at(x + noise * self.std)
            d1 += g
            d2 += g.pow(2)
            d3 += g.pow(3)
        n = self.num_samples
        return maps.smooth_gradcampp_weights(acts, d1 / n, d2 / n, d3 / n)


@register("refinecam", aliases=("refine-cam",))
class RefineCAM(GradCAMPlusPlus):
    r"""RefineCAM ("How to Evaluate and Refine your CAM", https://arxiv.org/abs/2605.14641).

    Grad-CAM++ maps of several layers, each upsampled to the input and scaled to ``[0, 1]``, refined
    by their element-wise product (:func:`camlens.maps.product_fusion`), then rescaled:

    .. math:: M = \mathrm{normalize}\Big(\prod_l \mathrm{normalize}\big(\mathrm{up}(L^{(l)})\big)\Big)

    The coarse maps of late layers keep what is relevant, and the fine maps of early layers sharpen
    it. Grad-CAM++ is the base, as in pytorch-grad-cam's and torchcam's ``RefineCAM``; every camlens
    method refines the same way with ``fuse="product"`` (``camlens.LayerCAM(model,
    layer=["layer2", "layer3", "layer4"], fuse="product")`` is their ``RefineCAM`` with
    ``base_method=LayerCAM``). Pass several layers; with one layer it is Grad-CAM++.

    The maps are multiplied at the input's resolution, as pytorch-grad-cam does; torchcam multiplies
    at the finest layer's resolution and upsamples the product, which differs only by where the
    bilinear interpolation happens. ``per_layer`` and ``raw_per_layer`` hold the layers' own maps.
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, fuse: str = "product", **kwargs: Any
    ) -> None:
        super().__init__(model, layer, fuse=fuse, **kwargs)
