"""Methods that need no gradient: CAM (classifier weights), Eigen-CAM and KPCA-CAM (principal
components) and FEM (k-sigma masks)."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec, resolve_layers
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["CAM", "FEM", "KPCACAM", "EigenCAM"]


@register("cam")
class CAM(BaseCAM):
    r"""CAM (Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150): the classifier's own weights.

    .. math:: M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Valid only when the model ends in global average pooling of the layer followed by one linear layer;
    camlens checks this numerically on every call (the classifier's input must equal the layer's spatial
    mean) and raises otherwise. Grad-CAM equals this map divided by ``Z`` for such heads, and works for
    any head.

    Args:
        fc: the linear classifier (name or module); ``None`` takes the model's last ``nn.Linear``.
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        fc: str | nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        if fc is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(
                    f"CAM needs a GAP + linear head, but {type(model).__name__} has no nn.Linear; use "
                    "GradCAM, which works for any head"
                )
            self._fc_name = linears[-1]
        else:
            self._fc_name = resolve_layers(model, fc)[0][0]
        self._classifier()  # an fc that is not nn.Linear fails here, not at the first call

    def _classifier(self) -> nn.Linear:
        """The classifier as it is in the model now (looked up by name at every call)."""
        fc = self.model.get_submodule(self._fc_name)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"fc={self._fc_name!r} is a {type(fc).__name__}, not an nn.Linear")
        return fc

    def _record_inputs(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        if len(layers) != 1:
            raise ValueError(
                "CAM explains one layer (the one the classifier pools); pass a single layer"
            )
        return [(self._fc_name, self._classifier())]

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        if ctx.target.classes is None:
            raise ValueError(
                "CAM needs class targets (None, an int or one int per sample), not a callable"
            )
        pooled = acts.mean(dim=tuple(range(2, acts.ndim)))
        fc_in = ctx.inputs.get(self._fc_name)
        if (
            fc_in is None
            or fc_in.reshape(pooled.shape[0], -1).shape != pooled.shape
            or not torch.allclose(
                fc_in.reshape(pooled.shape).float(),
                pooled,
                rtol=1e-4,
                atol=1e-5 * float(pooled.abs().max()) + 1e-6,
            )
        ):
            raise ValueError(
                f"CAM needs the classifier {self._fc_name!r} to take the global average of layer "
                f"{ctx.layer!r} as its input, and this model's head is different; use GradCAM, which "
                "equals CAM up to a constant for such heads and works for any head"
            )
        weight = self._classifier().weight.detach().float()
        return weight[ctx.target.classes.to(weight.device)].to(acts.device)


@register("eigencam", aliases=("eigen-cam",))
class EigenCAM(BaseCAM):
    r"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299).

    The first principal component of the layer's activations; no gradient, no target (the map is the same
    for every class). See :func:`camlens.maps.eigencam_map`.
    """

    needs_grad = False
    uses_target = False
    principal_component = True

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return acts


@register("kpcacam", aliases=("kpca-cam",))
class KPCACAM(BaseCAM):
    r"""KPCA-CAM (Karmani et al. 2024, https://arxiv.org/abs/2410.00267): Eigen-CAM with kernel PCA.

    Each position's activation vector is projected on the first principal component of a kernel
    PCA over the positions (:func:`camlens.maps.kpca_map`):

    .. math:: M = \mathrm{ReLU}\big(\sqrt{\lambda_1}\, v_1\big), \qquad
              (\lambda_1, v_1) = \text{top eigenpair of the centred kernel matrix }
              \big[k(A_i - \bar{A}, A_j - \bar{A})\big]_{ij}

    Computed in torch (no scikit-learn), with the kernels and defaults of pytorch-grad-cam's
    ``KPCA_CAM`` (scikit-learn's ``KernelPCA(n_components=1)``): ``kernel="sigmoid"``,
    ``gamma=None`` (``1 / K``), ``coef0=1``, ``degree=3``. No gradient, no target. The kernel matrix is
    ``Z x Z`` per sample (``Z`` positions), so early layers with many positions cost more.

    Args:
        kernel: ``"sigmoid"`` (default), ``"rbf"``, ``"poly"``, ``"linear"`` or ``"cosine"``.
        gamma: the kernel coefficient; ``None`` for ``1 / K`` (``K`` channels).
    """

    needs_grad = False
    uses_target = False
    kernel: str
    gamma: float | None

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        if kernel not in maps.KPCA_KERNELS:
            raise ValueError(
                f"kernel must be one of {', '.join(maps.KPCA_KERNELS)}, not {kernel!r}"
            )
        if gamma is not None and (
            isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma > 0
        ):
            raise ValueError(f"gamma must be None (1 / channels) or a number > 0, got {gamma!r}")
        self.kernel = kernel
        self.gamma = None if gamma is None else float(gamma)

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        super()._check_call(counterfactual, eigen_smooth)
        if eigen_smooth:
            raise ValueError(
                "KPCA-CAM's map is already a principal component; eigen_smooth has no meaning here"
            )

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return maps.kpca_map(acts, self.kernel, self.gamma).unsqueeze(1)


@register("fem")
class FEM(BaseCAM):
    r"""FEM, the Feature Explanation Method (Fuad et al., IPTA 2020, https://hal.science/hal-02963298).

    Each channel's unusually strong responses (the k-sigma rule), weighted by the channel's mean
    activation (:func:`camlens.maps.fem_terms`):

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \mu_k\, \mathbb{1}\big[A^k > \mu_k + k\,\sigma_k\big]\Big)

    with ``\mu_k`` and ``\sigma_k`` the mean and population standard deviation of channel ``k`` over
    positions. No gradient, no target. ``k=2`` is the default of the paper and of pytorch-grad-cam.
    This follows the paper, whose map is a weighted sum of binary masks; pytorch-grad-cam's ``FEM``
    weights the activations ``A^k`` by each mask's area instead (``sum_k mean(mask_k) A^k``), a
    different map (``tests/test_gradient_family.py`` shows both from the same masks).

    Args:
        k: how many standard deviations above its mean a response must be.
    """

    needs_grad = False
    uses_target = False
    k: float

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, k: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        if isinstance(k, bool) or not isinstance(k, numbers.Real):
            raise ValueError(f"k must be a number (standard deviations above the mean), got {k!r}")
        self.k = float(k)

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return maps.fem_terms(acts, self.k)
