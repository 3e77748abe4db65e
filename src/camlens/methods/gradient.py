"""The gradient family: each method is its formula from :mod:`camlens.maps`, nothing more."""

from __future__ import annotations

from torch import Tensor

from camlens import maps
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]


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
