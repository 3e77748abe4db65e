r"""Pure map formulas: activations and gradients in, weights and maps out.

Every formula of the class-activation-map family lives here exactly once, as a function on tensors
with no hooks and no models. Inputs are activations ``A`` and gradients ``G`` of shape
``(B, K, *spatial)`` where ``spatial`` has one, two or three axes; maps come out as ``(B, *spatial)``.
The method classes in :mod:`camlens.methods` only choose which function to call.

Notation (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391): ``A^k`` is channel ``k`` of
the layer's output, ``y^c`` the pre-softmax score of target ``c``, ``G^k = \partial y^c / \partial A^k``,
and ``Z`` the number of spatial positions.

Example:
    >>> import torch
    >>> A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])   # (B=1, K=1, 2, 2)
    >>> G = torch.full_like(A, 0.5)
    >>> gradcam_weights(G)
    tensor([[0.5000]])
    >>> weighted_sum(A, gradcam_weights(G))
    tensor([[[0.5000, 1.0000],
             [1.5000, 2.0000]]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KPCA_KERNELS",
    "ablation_weights",
    "channel_weighted",
    "deep_feature_factorization",
    "eigencam_map",
    "elementwise_terms",
    "fem_terms",
    "finer_objective",
    "finer_references",
    "fullgrad_bias_terms",
    "fullgrad_saliency",
    "gaussian_blur",
    "gradcam_weights",
    "gradcampp_weights",
    "hirescam_map",
    "hirescam_terms",
    "input_saliency",
    "iscam_scales",
    "kpca_map",
    "layercam_map",
    "layercam_terms",
    "legrad_relevance",
    "nmf",
    "normalize",
    "product_fusion",
    "random_weights",
    "reciprocam_features",
    "reciprocam_kernel",
    "resize",
    "scorecam_masks",
    "scorecam_weights",
    "sess_fuse",
    "sess_scales",
    "shapleycam_weights",
    "sliding_windows",
    "smooth_gradcampp_weights",
    "upsample",
    "weighted_sum",
    "xgradcam_weights",
]


def _spatial(t: Tensor) -> tuple[int, ...]:
    """The spatial axes of a ``(B, K, *spatial)`` tensor."""
    return tuple(range(2, t.ndim))


def _check_pair(acts: Tensor, grads: Tensor) -> None:
    if acts.shape != grads.shape:
        raise ValueError(
            f"activations {tuple(acts.shape)} and gradients {tuple(grads.shape)} must have the same shape"
        )
    if acts.ndim < 3:
        raise ValueError(
            f"expected (B, K, *spatial) with 1 to 3 spatial axes, got {tuple(acts.shape)}"
        )


def _broadcast(weights: Tensor, like: Tensor) -> Tensor:
    """``(B, K)`` weights reshaped to broadcast against ``(B, K, *spatial)``."""
    return weights.reshape(*weights.shape, *([1] * (like.ndim - 2)))


def gradcam_weights(grads: Tensor) -> Tensor:
    r"""Grad-CAM channel weights: the spatial mean of the gradients.

    .. math:: \alpha_k^c = \frac{1}{Z} \sum_{i} \frac{\partial y^c}{\partial A^k_i}

    Selvaraju et al. 2017, eq. 1 (https://arxiv.org/abs/1610.02391).

    Args:
        grads: ``(B, K, *spatial)`` gradients of the target score with respect to the activations.

    Returns:
        ``(B, K)`` weights.

    Example:
        >>> gradcam_weights(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """
    if grads.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) gradients, got {tuple(grads.shape)}")
    return grads.mean(dim=_spatial(grads))


def channel_weighted(acts: Tensor, weights: Tensor) -> Tensor:
    """Each activation channel times its weight, ``(B, K, *spatial)``: the terms that a map sums.

    Example:
        >>> channel_weighted(torch.ones(1, 2, 3), torch.tensor([[1.0, -2.0]]))[0, :, 0]
        tensor([ 1., -2.])
    """
    if weights.shape != acts.shape[:2]:
        raise ValueError(
            f"weights {tuple(weights.shape)} must be (B, K) = {tuple(acts.shape[:2])} for activations "
            f"{tuple(acts.shape)}"
        )
    return _broadcast(weights, acts) * acts


def weighted_sum(acts: Tensor, weights: Tensor) -> Tensor:
    r"""Channel-weighted sum of activation maps, before any ReLU.

    .. math:: M = \sum_k w_k A^k

    With Grad-CAM weights this is the Grad-CAM map before its ReLU; with the classifier weights of a
    GAP + linear head it is CAM (Zhou et al. 2016, https://arxiv.org/abs/1512.04150).

    Args:
        acts: ``(B, K, *spatial)`` activations.
        weights: ``(B, K)`` channel weights.

    Returns:
        ``(B, *spatial)`` map.

    Example:
        >>> weighted_sum(torch.ones(1, 2, 3), torch.tensor([[1.0, -2.0]]))
        tensor([[-1., -1., -1.]])
    """
    return channel_weighted(acts, weights).sum(dim=1)


def hirescam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM's per-channel terms ``G * A``, ``(B, K, *spatial)``; see :func:`hirescam_map`."""
    _check_pair(acts, grads)
    return grads * acts


def hirescam_map(acts: Tensor, grads: Tensor) -> Tensor:
    r"""HiResCAM map before its ReLU: element-wise gradient times activation, summed over channels.

    .. math:: M_i = \sum_k \frac{\partial y^c}{\partial A^k_i} A^k_i

    Draelos & Carin 2020 (https://arxiv.org/abs/2011.08891). For a GAP + linear head the gradient is
    constant over space, so this equals Grad-CAM.

    Example:
        >>> hirescam_map(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, -1.0]]]))
        tensor([[ 3., -2.]])
    """
    return hirescam_terms(acts, grads).sum(dim=1)


def gradcampp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    r"""Grad-CAM++ channel weights, with the paper's closed form for the higher derivatives.

    .. math::
        \alpha^{kc}_{i} = \frac{(G^k_i)^2}{2 (G^k_i)^2 + \sum_a A^k_a \, (G^k_i)^3}, \qquad
        w^c_k = \sum_i \alpha^{kc}_i \, \mathrm{ReLU}(G^k_i)

    Chattopadhay et al. 2018, eq. 19 (https://arxiv.org/abs/1710.11063), where the second and third
    derivatives of ``exp(y^c)`` are written with powers of the first. ``alpha`` is 0 where its
    denominator is 0 (the paper's 0/0 case). No epsilon is added: pytorch-grad-cam adds 1e-6 to the
    denominator, which dominates it when gradients are below about 1e-3 (common at deep layers) and
    turns the weights into something else.

    Example:
        >>> A = torch.tensor([[[1.0, 1.0]]]); G = torch.tensor([[[1.0, 0.0]]])
        >>> gradcampp_weights(A, G)   # alpha = 1 / (2 + 2) at the first position
        tensor([[0.2500]])
    """
    _check_pair(acts, grads)
    g2 = grads.pow(2)
    return smooth_gradcampp_weights(acts, grads, g2, g2 * grads)


def smooth_gradcampp_weights(acts: Tensor, d1: Tensor, d2: Tensor, d3: Tensor) -> Tensor:
    r"""Smooth Grad-CAM++ channel weights: Grad-CAM++'s closed form on averaged derivatives.

    With ``D^{(p)}`` the mean over ``n`` noisy copies of the input of the ``p``-th power of the
    gradient (the paper's estimates of the ``p``-th derivatives of ``exp(y^c)``):

    .. math::
        \alpha^{kc}_{i} = \frac{D^{(2)}_{k,i}}{2 D^{(2)}_{k,i} + \sum_a A^k_a \, D^{(3)}_{k,i}},
        \qquad w^c_k = \sum_i \alpha^{kc}_i \, \mathrm{ReLU}\big(D^{(1)}_{k,i}\big)

    Omeiza et al. 2019, eq. 9-11 (https://arxiv.org/abs/1908.01224), with ``A`` the activations of
    the clean input. The numerator is ``D^{(2)}`` (torchcam's correction of the paper, which prints
    ``D^{(1)}``; with ``D^{(2)}`` one noise-free copy gives Grad-CAM++ exactly), and the ReLU is
    taken of the averaged gradient ``D^{(1)}`` (SmoothGrad's estimate; torchcam uses the last noisy
    copy's gradient there). ``alpha`` is 0 where its denominator is 0; no epsilon is added.
    :func:`gradcampp_weights` is this function with ``D^{(p)} = G^p``.

    Args:
        acts: ``(B, K, *spatial)`` activations of the clean input.
        d1, d2, d3: ``(B, K, *spatial)`` means of ``G``, ``G^2`` and ``G^3`` over the noisy copies.

    Example:
        >>> A = torch.tensor([[[1.0, 1.0]]]); G = torch.tensor([[[1.0, 0.0]]])
        >>> smooth_gradcampp_weights(A, G, G**2, G**3)   # one copy: Grad-CAM++
        tensor([[0.2500]])
    """
    _check_pair(acts, d1)
    _check_pair(acts, d2)
    _check_pair(acts, d3)
    sum_a = _broadcast(acts.sum(dim=_spatial(acts)), acts)
    denom = 2 * d2 + sum_a * d3
    defined = denom != 0
    alpha = torch.where(
        defined, d2 / torch.where(defined, denom, torch.ones_like(denom)), torch.zeros_like(d2)
    )
    return (alpha * d1.clamp(min=0)).sum(dim=_spatial(d1))


def xgradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    r"""XGrad-CAM channel weights: gradients averaged with the normalised activations as weights.

    .. math:: w^c_k = \sum_i \frac{A^k_i}{\sum_a A^k_a} \frac{\partial y^c}{\partial A^k_i}

    Fu et al. 2020 (https://arxiv.org/abs/2008.02312). A channel whose activations sum to 0 gets weight 0.

    Example:
        >>> xgradcam_weights(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[4.0, 8.0]]]))
        tensor([[7.]])
    """
    _check_pair(acts, grads)
    sum_a = acts.sum(dim=_spatial(acts))
    num = (grads * acts).sum(dim=_spatial(acts))
    defined = sum_a != 0
    return torch.where(
        defined, num / torch.where(defined, sum_a, torch.ones_like(sum_a)), torch.zeros_like(num)
    )


def layercam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM's per-channel terms ``ReLU(G) * A``, ``(B, K, *spatial)``; see :func:`layercam_map`."""
    _check_pair(acts, grads)
    return grads.clamp(min=0) * acts


def layercam_map(acts: Tensor, grads: Tensor) -> Tensor:
    r"""LayerCAM map before its ReLU: positive gradients weight each activation element-wise.

    .. math:: M_i = \sum_k \mathrm{ReLU}\!\left(\frac{\partial y^c}{\partial A^k_i}\right) A^k_i

    Jiang et al. 2021 (https://doi.org/10.1109/TIP.2021.3089943).

    Example:
        >>> layercam_map(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, -1.0]]]))
        tensor([[3., 0.]])
    """
    return layercam_terms(acts, grads).sum(dim=1)


def elementwise_terms(acts: Tensor, grads: Tensor) -> Tensor:
    r"""Grad-CAM element-wise terms: the ReLU of each gradient-activation product, ``(B, K, *spatial)``.

    .. math:: M_i = \sum_k \mathrm{ReLU}\!\left(\frac{\partial y^c}{\partial A^k_i} A^k_i\right)

    pytorch-grad-cam's ``GradCAMElementWise`` (no paper;
    https://github.com/jacobgil/pytorch-grad-cam): like HiResCAM
    (https://arxiv.org/abs/2011.08891), but a channel's negative products cannot cancel another's
    positive ones.

    Example:
        >>> elementwise_terms(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, -1.0]]]))
        tensor([[[3., 0.]]])
    """
    _check_pair(acts, grads)
    return (grads * acts).clamp(min=0)


def shapleycam_weights(grads: Tensor, hvp: Tensor) -> Tensor:
    r"""ShapleyCAM channel weights: the gradient corrected by half the Hessian-vector product, averaged.

    .. math:: w^c_k = \frac{1}{Z} \sum_i \Big(\frac{\partial y^c}{\partial A^k_i}
              - \tfrac{1}{2} \big(\nabla^2_A y^c \, A\big)^k_i\Big)

    Cai 2025 (https://arxiv.org/abs/2501.06261): ``A \odot (G - \tfrac12 H A)`` is the second-order
    Taylor estimate of each activation's Shapley value; averaging it over space as Grad-CAM does gives
    these weights (pytorch-grad-cam's ``ShapleyCAM``). For a target whose Hessian at the layer
    vanishes (the logits of a ReLU network) they are Grad-CAM's weights.

    Args:
        grads: ``(B, K, *spatial)`` gradients ``G``.
        hvp: ``(B, K, *spatial)`` Hessian-vector products ``H A``
            (:func:`camlens.capture.layer_gradients_and_hvp`).

    Example:
        >>> shapleycam_weights(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[2.0, 0.0]]]))
        tensor([[1.5000]])
    """
    _check_pair(grads, hvp)
    return gradcam_weights(grads - 0.5 * hvp)


def fem_terms(acts: Tensor, k: float = 2.0) -> Tensor:
    r"""FEM terms: each channel's k-sigma mask weighted by the channel's mean, ``(B, K, *spatial)``.

    .. math:: M = \sum_k \mu_k \, \mathbb{1}\big[A^k > \mu_k + k \sigma_k\big]

    with ``\mu_k`` and ``\sigma_k`` the mean and (population) standard deviation of channel ``k``
    over positions. Fuad et al. 2020, the Feature Explanation Method
    (https://hal.science/hal-02963298): the binary map of each channel's unusually strong responses,
    weighted by the channel's importance, its mean activation; no gradient, no target.
    pytorch-grad-cam's ``FEM`` instead weights the activations ``A^k`` by the fraction of positions
    in the mask.

    Args:
        acts: ``(B, K, *spatial)`` activations.
        k: how many standard deviations above the mean a response must be.

    Example:
        >>> A = torch.tensor([[[0.0, 0.0, 0.0, 4.0]]])  # mean 1, std 1.73: only 4 exceeds mean + 1 std
        >>> fem_terms(A, k=1.0)
        tensor([[[0., 0., 0., 1.]]])
    """
    if acts.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) activations, got {tuple(acts.shape)}")
    dims = _spatial(acts)
    mean = acts.mean(dim=dims, keepdim=True)
    std = acts.std(dim=dims, keepdim=True, correction=0)
    return (acts > mean + k * std).to(acts.dtype) * mean


#: The kernels of :func:`kpca_map`.
KPCA_KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _positions_by_channels(acts: Tensor) -> Tensor:
    """``(B, K, *spatial)`` activations as ``(B, Z, K)`` float64 rows, one per position."""
    b, k = acts.shape[:2]
    return acts.reshape(b, k, -1).transpose(1, 2).double()


def _oriented(proj: Tensor, mat: Tensor) -> Tensor:
    """A principal component's ``(B, Z)`` projection with its arbitrary sign chosen so that it
    correlates positively with the activations' total energy per position (``mat``: ``(B, Z, K)``)."""
    energy = mat.sum(dim=2)
    energy = energy - energy.mean(dim=1, keepdim=True)
    return proj * torch.where((proj * energy).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj)


def kpca_map(
    acts: Tensor,
    kernel: str = "sigmoid",
    gamma: float | None = None,
    *,
    coef0: float = 1.0,
    degree: int = 3,
) -> Tensor:
    r"""KPCA-CAM map: each position projected on the first kernel principal component of the activations.

    Each sample's activations form a ``(Z, K)`` matrix (positions by channels), centred over positions
    as for Eigen-CAM. With a kernel ``k(a, b)`` on positions, the centred kernel matrix
    ``\tilde{\mathcal{K}} = (I - \tfrac1Z \mathbf{1})\,\mathcal{K}\,(I - \tfrac1Z \mathbf{1})``
    has a top eigenpair ``(\lambda_1, v_1)``, and the map is the projection of every position on it:

    .. math:: M = \sqrt{\lambda_1} \, v_1

    Karmani et al. 2024 (https://arxiv.org/abs/2410.00267), as pytorch-grad-cam computes it with
    scikit-learn's ``KernelPCA(n_components=1)``: kernels ``sigmoid`` ``tanh(gamma a.b + coef0)``
    (the default), ``rbf`` ``exp(-gamma |a - b|^2)``, ``poly`` ``(gamma a.b + coef0)^degree``,
    ``linear`` ``a.b`` and ``cosine``; ``gamma=None`` is ``1 / K``; ``coef0 = 1``, ``degree = 3``.
    Solved in torch (float64, one batched ``eigh``). An eigenvector's sign is arbitrary: it is
    chosen, as in :func:`eigencam_map`, so that the map correlates positively with the
    channel-summed activations. A zero top eigenvalue gives a zero map.

    Args:
        acts: ``(B, K, *spatial)`` activations.
        kernel: one of ``"sigmoid"``, ``"rbf"``, ``"poly"``, ``"linear"``, ``"cosine"``.
        gamma: the kernel coefficient; ``None`` for ``1 / K``.

    Returns:
        ``(B, *spatial)`` map, before ReLU.

    Example:
        >>> A = torch.zeros(1, 2, 4); A[0, :, 2] = 1.0   # both channels fire at position 2
        >>> kpca_map(A, "rbf").argmax().item()
        2
    """
    if acts.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) activations, got {tuple(acts.shape)}")
    if kernel not in KPCA_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KPCA_KERNELS)}, not {kernel!r}")
    b, k = acts.shape[:2]
    spatial = acts.shape[2:]
    mat = _positions_by_channels(acts)
    x = mat - mat.mean(dim=1, keepdim=True)
    g = 1.0 / k if gamma is None else float(gamma)
    if kernel == "rbf":
        sq = (x * x).sum(-1)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * x @ x.transpose(1, 2)).clamp(min=0)
        kmat = torch.exp(-g * dist)
    elif kernel == "cosine":
        unit = x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        kmat = unit @ unit.transpose(1, 2)
    else:
        dot = x @ x.transpose(1, 2)
        kmat = {
            "sigmoid": lambda: torch.tanh(g * dot + coef0),
            "poly": lambda: (g * dot + coef0) ** degree,
            "linear": lambda: dot,
        }[kernel]()
    centred = (
        kmat
        - kmat.mean(dim=1, keepdim=True)
        - kmat.mean(dim=2, keepdim=True)
        + kmat.mean(dim=(1, 2), keepdim=True)
    )
    evals, evecs = torch.linalg.eigh(centred)  # ascending
    proj = evecs[:, :, -1] * evals[:, -1:].clamp(min=0).sqrt()  # (B, Z)
    return _oriented(proj, mat).to(acts.dtype).reshape(b, *spatial)


def fullgrad_bias_terms(grads: Tensor, bias: Tensor, channel_dim: int = 1) -> Tensor:
    r"""FullGrad's bias-gradient terms of one layer: the gradient at its output times its bias.

    .. math:: R^{(l)}_{k,i} = b^{(l)}_k \, \frac{\partial y^c}{\partial z^{(l)}_{k,i}}

    where ``z^{(l)}`` is the output of a layer with bias ``b^{(l)}`` (for a batch norm in eval mode,
    its effective bias ``\beta - \gamma \mu / \sqrt{\sigma^2 + \epsilon}``). Srinivas & Fleuret
    2019, eq. 2 (https://arxiv.org/abs/1905.00780). Summed over every position and channel of every
    layer, together with the input term ``x \odot \nabla_x y^c``, these give ``y^c`` exactly for a
    piecewise-linear network (completeness, their Proposition 1).

    Args:
        grads: ``(B, ..., K, ...)`` gradients of the score at the layer's output.
        bias: ``(K,)`` bias.
        channel_dim: the axis of ``grads`` that ``bias`` runs along (1 for convolutions and batch
            norms, -1 for linear layers).

    Example:
        >>> fullgrad_bias_terms(torch.ones(1, 2, 3), torch.tensor([2.0, -1.0]))[0, :, 0]
        tensor([ 2., -1.])
    """
    dim = channel_dim % grads.ndim
    if bias.ndim != 1 or bias.shape[0] != grads.shape[dim]:
        raise ValueError(
            f"bias {tuple(bias.shape)} does not fit axis {channel_dim} of gradients {tuple(grads.shape)}"
        )
    shape = [1] * grads.ndim
    shape[dim] = bias.shape[0]
    return grads * bias.reshape(shape).to(grads)


def fullgrad_saliency(terms: Tensor) -> Tensor:
    r"""FullGrad's post-processing of one term: ``\psi``, then the sum over channels, ``(B, *spatial)``.

    .. math:: \psi(R) = \frac{|R| - \min |R|}{\max |R| - \min |R|}, \qquad
              S = \sum_k \psi(R)_k

    where min and max run over all channels and positions of the sample, as in the paper's code
    (Srinivas & Fleuret 2019, https://arxiv.org/abs/1905.00780, ``FullGrad._postProcess``);
    pytorch-grad-cam scales each channel on its own instead. A constant term gives zeros. The
    FullGrad map is the sum of this over the input term and every bias layer, each upsampled to the
    input (:func:`upsample`, which commutes with the sum over channels).

    Args:
        terms: ``(B, K, *spatial)``: ``x * grad_x`` or :func:`fullgrad_bias_terms` of a layer.

    Example:
        >>> fullgrad_saliency(torch.tensor([[[1.0, -3.0], [0.0, 2.0]]]))   # |R| scaled to [0, 1] by 3
        tensor([[0.3333, 1.6667]])
    """
    if terms.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) terms, got {tuple(terms.shape)}")
    mag = terms.abs()
    flat = mag.reshape(mag.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, *([1] * (mag.ndim - 1)))
    span = flat.max(dim=1).values.reshape(-1, *([1] * (mag.ndim - 1))) - lo
    scaled = torch.where(
        span > 0, (mag - lo) / span.clamp(min=torch.finfo(mag.dtype).tiny), torch.zeros_like(mag)
    )
    return scaled.sum(dim=1)


def legrad_relevance(attn_grads: Tensor) -> Tensor:
    r"""LeGrad's relevance of each key token from the gradient of a layer's score at its attention.

    .. math:: E^l = \frac{1}{H N_q} \sum_{h, q} \mathrm{ReLU}\!\left(
              \frac{\partial s^l}{\partial P^l_{h, q, \cdot}}\right)

    where ``P^l`` are the attention probabilities of block ``l`` and ``s^l`` the target's score
    computed from that block's tokens. Bousselham et al. 2024, eq. 4-5
    (https://arxiv.org/abs/2404.03214); the map averages ``E^l`` over the blocks, drops the prefix
    (class, register) keys and lays the patch keys out on their grid.

    Args:
        attn_grads: ``(B, H, N_q, N_k)`` gradients of ``s^l`` at ``P^l``.

    Returns:
        ``(B, N_k)``, non-negative.

    Example:
        >>> g = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])   # one head, two queries, two keys
        >>> legrad_relevance(g)
        tensor([[2., 0.]])
    """
    if attn_grads.ndim != 4:
        raise ValueError(f"expected (B, H, N_q, N_k) gradients, got {tuple(attn_grads.shape)}")
    return attn_grads.clamp(min=0).mean(dim=(1, 2))


def product_fusion(layer_maps: Tensor) -> Tensor:
    r"""RefineCAM's fusion: the element-wise product of the layers' maps, each scaled to ``[0, 1]``.

    .. math:: M = \prod_l \hat{M}^{(l)}

    where ``\hat{M}^{(l)}`` is layer ``l``'s map, upsampled to a common size and min-max scaled
    (:func:`normalize`). A position survives only where every layer agrees, so the fine, noisy maps
    of early layers are cleaned by the coarse, reliable ones of late layers (RefineCAM, "How to
    Evaluate and Refine your CAM", https://arxiv.org/abs/2605.14641, as pytorch-grad-cam's and
    torchcam's ``RefineCAM``).

    Args:
        layer_maps: ``(L, B, *spatial)`` scaled maps.

    Returns:
        ``(B, *spatial)``, before the final rescaling.

    Example:
        >>> product_fusion(torch.tensor([[[1.0, 0.5]], [[0.5, 0.0]]]))
        tensor([[0.5000, 0.0000]])
    """
    if layer_maps.ndim < 2:
        raise ValueError(f"expected (L, B, *spatial) maps, got {tuple(layer_maps.shape)}")
    return layer_maps.prod(dim=0)


def eigencam_map(acts: Tensor) -> Tensor:
    r"""Eigen-CAM map: the activations projected on their first principal component.

    Each sample's activations are arranged as a ``(Z, K)`` matrix (positions by channels), centred over
    positions, and projected on the first right singular vector ``v_1``:

    .. math:: M = (A - \bar{A}) \, v_1

    Muhammad & Yeasin 2020 (https://arxiv.org/abs/2008.00299); centring as in pytorch-grad-cam. A
    singular vector's sign is arbitrary, so it is chosen to make ``M`` correlate positively with the
    channel-summed activations (the map points at where the layer fires, not away from it). The map
    does not depend on any target.

    Args:
        acts: ``(B, K, *spatial)`` activations.

    Returns:
        ``(B, *spatial)`` map, before ReLU.

    Example:
        >>> A = torch.zeros(1, 2, 3); A[0, :, 1] = 1.0   # both channels fire at position 1
        >>> eigencam_map(A).argmax().item()
        1
    """
    if acts.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) activations, got {tuple(acts.shape)}")
    b = acts.shape[0]
    spatial = acts.shape[2:]
    mat = _positions_by_channels(acts)
    centred = mat - mat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:, 0, :].unsqueeze(-1)  # (B, Z, 1)
    proj = proj.squeeze(-1)
    return _oriented(proj, mat).to(acts.dtype).reshape(b, *spatial)


def scorecam_masks(acts: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    r"""Score-CAM's masks: each activation map upsampled to the input and min-max scaled to ``[0, 1]``.

    .. math:: H_k = \frac{U(A^k) - \min U(A^k)}{\max U(A^k) - \min U(A^k)}

    Wang et al. 2020, eq. 4 (https://arxiv.org/abs/1910.01279). ``U`` is :func:`upsample` (bilinear
    with ``align_corners=False`` in 2-D) and the scaling :func:`normalize`: a constant map gives all
    ones when positive and all zeros otherwise.

    Args:
        acts: ``(n, *spatial)`` activation maps (one channel each).
        size: the input's spatial size.

    Returns:
        ``(n, *size)`` masks in ``[0, 1]``.

    Example:
        >>> scorecam_masks(torch.tensor([[0.0, 2.0], [3.0, 3.0]]), (4,))
        tensor([[0.0000, 0.2500, 0.7500, 1.0000],
                [1.0000, 1.0000, 1.0000, 1.0000]])
    """
    return normalize(upsample(acts, size))


def iscam_scales(steps: int) -> Tensor:
    r"""IS-CAM's integration points along the path from the baseline to the full mask: ``i / N``.

    .. math:: w_k = \frac{1}{N} \sum_{i=1}^{N} \Big[y^c\big(X \odot \tfrac{i}{N} H_k + B \odot
              (1 - \tfrac{i}{N} H_k)\big) - y^c(B)\Big]

    Naidu et al. 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations"
    (https://arxiv.org/abs/2010.03023): a Riemann sum of the score along the straight path from the
    baseline (mask 0) to Score-CAM's masked input (mask ``H_k``), as in integrated gradients. One step
    is Score-CAM.

    Example:
        >>> iscam_scales(4)
        tensor([0.2500, 0.5000, 0.7500, 1.0000])
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return torch.arange(1, steps + 1, dtype=torch.float32) / steps


def scorecam_weights(masked_scores: Tensor, baseline_scores: Tensor | float = 0.0) -> Tensor:
    r"""Score-CAM channel weights: each channel's increase of confidence (CIC), averaged over samples.

    .. math:: w_k = \frac{1}{N} \sum_{j=1}^{N} y^c\big(X \odot M_{k,j} + B \odot (1 - M_{k,j})\big)
              - y^c(B)

    where ``B`` is the baseline image and ``M_{k,j}`` the ``j``-th perturbed mask of channel ``k``:

    * Score-CAM (Wang et al. 2020, eq. 5, https://arxiv.org/abs/1910.01279): ``N = 1``,
      ``M_k = H_k`` (:func:`scorecam_masks`);
    * SS-CAM (Wang et al. 2020, https://arxiv.org/abs/2006.14255): ``M_{k,j} = H_k + \delta_j`` with
      Gaussian noise :math:`\delta_j \sim \mathcal{N}(0, \sigma^2)` on every pixel;
    * IS-CAM (Naidu et al. 2020): ``M_{k,i} = (i / N) H_k`` (:func:`iscam_scales`).

    Args:
        masked_scores: ``(B, K)`` target scores on the masked inputs, or ``(N, B, K)`` for ``N``
            perturbed masks per channel (averaged).
        baseline_scores: ``(B,)`` target scores on the baseline image, or a number (0 gives the raw
            scores as weights).

    Returns:
        ``(B, K)`` weights.

    Example:
        >>> scorecam_weights(torch.tensor([[3.0, 1.0]]), torch.tensor([2.0]))
        tensor([[ 1., -1.]])
        >>> scorecam_weights(torch.tensor([[[3.0, 1.0]], [[5.0, 1.0]]]), torch.tensor([2.0]))
        tensor([[ 2., -1.]])
    """
    if masked_scores.ndim == 3:
        masked_scores = masked_scores.mean(dim=0)
    if masked_scores.ndim != 2:
        raise ValueError(
            f"expected (B, K) or (N, B, K) masked scores, got {tuple(masked_scores.shape)}"
        )
    base = torch.as_tensor(baseline_scores, dtype=masked_scores.dtype, device=masked_scores.device)
    return masked_scores - (base[:, None] if base.ndim == 1 else base)


def ablation_weights(scores: Tensor, ablated_scores: Tensor) -> Tensor:
    r"""Ablation-CAM channel weights: the relative drop of the score when a channel is zeroed.

    .. math:: w_k = \frac{y^c - y^c_k}{y^c}

    where ``y^c_k`` is the score with channel ``k`` of the layer set to zero. Desai & Ramaswamy 2020,
    eq. 2 (WACV, https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html).
    A score of exactly 0 is not divided by (the drop itself is the weight).

    Args:
        scores: ``(B,)`` target scores of the intact model.
        ablated_scores: ``(B, K)`` target scores with each channel ablated.

    Example:
        >>> ablation_weights(torch.tensor([4.0]), torch.tensor([[3.0, 5.0]]))
        tensor([[ 0.2500, -0.2500]])
    """
    if scores.ndim != 1 or ablated_scores.ndim != 2 or ablated_scores.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected (B,) scores and (B, K) ablated scores, got {tuple(scores.shape)} and "
            f"{tuple(ablated_scores.shape)}"
        )
    denom = torch.where(scores != 0, scores, torch.ones_like(scores))[:, None]
    return (scores[:, None] - ablated_scores) / denom


def reciprocam_kernel(ndim: int, kind: str = "gaussian") -> Tensor:
    r"""The spatial kernel with which Recipro-CAM spreads a position's features to its neighbours.

    ``"gaussian"``: the binomial kernel :math:`g = [\tfrac14, \tfrac12, \tfrac14]^{\otimes n}` on
    ``n`` spatial axes (in 2-D the 3x3 filter ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` of the
    authors' code); ``"point"``: the one-position kernel ``[1]`` (the plain spatial mask of the
    paper's first version).

    Example:
        >>> reciprocam_kernel(2) * 16
        tensor([[1., 2., 1.],
                [2., 4., 2.],
                [1., 2., 1.]])
        >>> reciprocam_kernel(1, "point")
        tensor([1.])
    """
    if kind == "point":
        base = torch.ones(1)
    elif kind == "gaussian":
        base = torch.tensor([0.25, 0.5, 0.25])
    else:
        raise ValueError(f"kernel must be 'gaussian' or 'point', not {kind!r}")
    if ndim not in (1, 2, 3):
        raise ValueError(f"only 1, 2 or 3 spatial axes are supported, got {ndim}")
    out = base
    for _ in range(ndim - 1):
        out = out[..., None] * base
    return out


def reciprocam_features(
    acts: Tensor, rows: Tensor, positions: Tensor, kernel: Tensor | str = "gaussian"
) -> Tensor:
    r"""Recipro-CAM's spatially masked feature maps: one position's features, alone on the map.

    For the position ``p`` the masked map keeps the channel vector :math:`A_{:,p}` and spreads it over
    ``p``'s neighbourhood with the kernel ``g`` (:func:`reciprocam_kernel`); everything else is 0:

    .. math:: M^{(p)}_{k,q} = A^k_p \; g(q - p)

    (the kernel is cut at the border, not renormalised). Byun & Lee 2022, "Recipro-CAM: Fast
    gradient-free visual explanations for convolutional neural networks"
    (https://arxiv.org/abs/2209.14074); the head of the network scores each ``M^{(p)}`` and that
    score is the map's value at ``p``.

    Args:
        acts: ``(B, K, *spatial)`` activations.
        rows: ``(n,)`` the sample of each masked map.
        positions: ``(n,)`` flat (row-major) index of each map's position in ``spatial``.
        kernel: an odd-sized kernel with one axis per spatial axis, or its name.

    Returns:
        ``(n, K, *spatial)``.

    Example:
        >>> A = torch.arange(1.0, 5.0).reshape(1, 1, 4)           # one channel, four positions
        >>> reciprocam_features(A, torch.tensor([0, 0]), torch.tensor([0, 2]))
        tensor([[[0.5000, 0.2500, 0.0000, 0.0000]],
        <BLANKLINE>
                [[0.0000, 0.7500, 1.5000, 0.7500]]])
    """
    if acts.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) activations, got {tuple(acts.shape)}")
    spatial = tuple(acts.shape[2:])
    g = reciprocam_kernel(len(spatial), kernel) if isinstance(kernel, str) else kernel
    if g.ndim != len(spatial) or any(s % 2 == 0 for s in g.shape):
        raise ValueError(f"kernel {tuple(g.shape)} must have one odd-sized axis per spatial axis")
    n = positions.shape[0]
    z = math.prod(spatial)
    onehot = torch.zeros(n, z, dtype=acts.dtype, device=acts.device)
    onehot.scatter_(1, positions.to(acts.device).long()[:, None], 1.0)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
    spread = conv(
        onehot.reshape(n, 1, *spatial),
        g.flip(tuple(range(g.ndim))).to(acts)[None, None],  # a true convolution: g(q - p)
        padding=[s // 2 for s in g.shape],
    )  # (n, 1, *spatial)
    flat = acts.flatten(2)  # (B, K, Z)
    centre = flat[rows.to(acts.device).long(), :, positions.to(acts.device).long()]  # (n, K)
    return centre.reshape(n, -1, *([1] * len(spatial))) * spread


def finer_references(logits: Tensor, classes: Tensor, n: int) -> Tensor:
    r"""Finer-CAM's reference classes: the ``n`` classes whose scores are closest to the target's.

    .. math:: d_1, \dots, d_n = \operatorname*{arg\,min}_{d \ne c} |y^d - y^c|

    Zhang et al. 2025 (https://arxiv.org/abs/2501.11309): the classes the model finds most similar to
    ``c`` for this image. The target itself is never a reference; ``n`` is capped at the number of
    other classes; ties go to the lower class index.

    Args:
        logits: ``(B, C)`` scores.
        classes: ``(B,)`` target classes.
        n: how many references.

    Returns:
        ``(B, min(n, C - 1))`` class indices, closest first.

    Example:
        >>> finer_references(torch.tensor([[5.0, 4.5, 0.0, 6.0]]), torch.tensor([0]), 2)
        tensor([[1, 3]])
    """
    if logits.ndim != 2 or classes.shape != logits.shape[:1]:
        raise ValueError(
            f"expected (B, C) logits and (B,) classes, got {tuple(logits.shape)} and {tuple(classes.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError("Finer-CAM needs at least two classes to compare")
    y = logits.detach().double()
    idx = classes.to(y.device).long()[:, None]
    dist = (y - y.gather(1, idx)).abs().scatter(1, idx, float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices
    return order[:, : min(int(n), logits.shape[1] - 1)]


def finer_objective(
    logits: Tensor, classes: Tensor, references: Tensor, alpha: float, weights: Tensor | None = None
) -> Tensor:
    r"""Finer-CAM's objective: the target's score minus ``alpha`` times its references' scores.

    .. math:: s = y^c - \alpha \sum_{j} \omega_j \, y^{d_j}, \qquad \sum_j \omega_j = 1

    Zhang et al. 2025 (https://arxiv.org/abs/2501.11309): a CAM of ``s`` instead of ``y^c`` keeps
    what tells ``c`` apart from the similar classes ``d_j`` and drops what they share. ``weights``
    ``omega`` are constants (no gradient flows through them); ``None`` averages the references. A
    reference equal to the target class gets weight 0 (the others are renormalised); a row whose
    references are all the target gives ``y^c``.

    Args:
        logits: ``(B, C)`` scores (the gradient flows through them).
        classes: ``(B,)`` target classes.
        references: ``(B, n)`` reference classes.
        alpha: the comparison strength (0 gives ``y^c``).
        weights: ``(B, n)`` non-negative weights of the references, or ``None``.

    Returns:
        ``(B,)``.

    Example:
        >>> y = torch.tensor([[3.0, 1.0, 2.0]])
        >>> finer_objective(y, torch.tensor([0]), torch.tensor([[1, 2]]), alpha=1.0)   # 3 - (1 + 2) / 2
        tensor([1.5000])
    """
    if references.ndim != 2 or references.shape[0] != logits.shape[0]:
        raise ValueError(f"expected (B, n) references, got {tuple(references.shape)}")
    idx = classes.to(logits.device).long()
    refs = references.to(logits.device).long()
    w = torch.ones(refs.shape, device=logits.device) if weights is None else weights.detach()
    w = w.to(logits.dtype) * (refs != idx[:, None]).to(logits.dtype)
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), w)
    target = logits.gather(1, idx[:, None]).squeeze(1)
    return target - alpha * (w * logits.gather(1, refs)).sum(dim=1)


def random_weights(k: int, generator: torch.Generator) -> Tensor:
    r"""Random channel weights, uniform on ``[-1, 1)``: the weights of the RandomCAM baseline.

    .. math:: w_k \sim \mathcal{U}(-1, 1)

    As pytorch-grad-cam's ``RandomCAM``, drawn from ``generator`` (on its device) so that a seed
    reproduces them.

    Example:
        >>> w = random_weights(4, torch.Generator().manual_seed(0))
        >>> w.shape, bool((w >= -1).all() and (w < 1).all())
        (torch.Size([4]), True)
        >>> torch.equal(w, random_weights(4, torch.Generator().manual_seed(0)))
        True
    """
    return torch.rand(k, generator=generator, device=generator.device) * 2 - 1


def _nndsvda(v: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos 2008), zeros filled with the mean of ``v``."""
    u, sv, vt = torch.linalg.svd(v, full_matrices=False)
    w = torch.zeros(v.shape[0], rank, dtype=v.dtype, device=v.device)
    h = torch.zeros(rank, v.shape[1], dtype=v.dtype, device=v.device)
    w[:, 0] = sv[0].sqrt() * u[:, 0].abs()
    h[0] = sv[0].sqrt() * vt[0].abs()
    for j in range(1, rank):
        x, y = u[:, j], vt[j]
        xp, xn, yp, yn = x.clamp(min=0), (-x).clamp(min=0), y.clamp(min=0), (-y).clamp(min=0)
        pos = xp.norm() * yp.norm()
        neg = xn.norm() * yn.norm()
        a, b, sigma = (xp, yp, pos) if pos > neg else (xn, yn, neg)
        scale = (sv[j] * sigma).sqrt()
        w[:, j] = scale * a / a.norm().clamp(min=1e-300)
        h[j] = scale * b / b.norm().clamp(min=1e-300)
    mean = v.mean()
    return torch.where(w == 0, mean, w), torch.where(h == 0, mean, h)


def nmf(
    v: Tensor, rank: int, *, iters: int = 200, tol: float = 1e-4
) -> tuple[Tensor, Tensor, float]:
    r"""Non-negative matrix factorisation :math:`V \approx W H` by hierarchical alternating least squares.

    .. math:: \min_{W \ge 0,\, H \ge 0} \lVert V - W H \rVert_F^2

    Each sweep updates every row of ``H``, then every column of ``W``, by its exact non-negative
    least-squares solution with the others fixed (Cichocki & Phan 2009; the coordinate descent of
    scikit-learn's default ``NMF`` solver). Initialised deterministically by NNDSVDa (Boutsidis &
    Gallopoulos 2008), so no random state is involved. Stops after ``iters`` sweeps, or when ten
    sweeps lower the relative error by less than ``tol`` of its value (scikit-learn's defaults: 200
    and 1e-4, checked every 10 sweeps). Computed in float64.

    Args:
        v: ``(m, n)`` non-negative matrix.
        rank: the number of components ``r`` (at most ``min(m, n)``).
        iters: most sweeps.
        tol: relative improvement below which it stops.

    Returns:
        ``W`` ``(m, r)``, ``H`` ``(r, n)`` (both ``>= 0``, in ``v``'s dtype) and the relative error
        :math:`\lVert V - WH \rVert_F / \lVert V \rVert_F`.

    Example:
        >>> w0, h0 = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
        >>> w, h, err = nmf(w0 @ h0, 2)
        >>> err < 1e-6, bool((w >= 0).all() and (h >= 0).all())
        (True, True)
    """
    if v.ndim != 2:
        raise ValueError(f"expected a (m, n) matrix, got {tuple(v.shape)}")
    if bool((v < 0).any()) or not bool(torch.isfinite(v).all()):
        raise ValueError("NMF needs a finite, non-negative matrix")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(v.shape):
        raise ValueError(
            f"rank must be an int in [1, {min(v.shape)}] for a {tuple(v.shape)} matrix"
        )
    x = v.double()
    norm = float(x.norm())
    if norm == 0:
        return torch.zeros_like(v[:, :rank]), torch.zeros_like(v[:rank]), 0.0
    w, h = _nndsvda(x, rank)

    def error() -> float:
        return float((x - w @ h).norm()) / norm

    tiny = torch.finfo(torch.float64).tiny

    def nonneg(t: Tensor) -> Tensor:
        # denormal values (below `tiny`) make every later operation slow: they are flushed to 0
        return torch.where(t > tiny, t, torch.zeros_like(t))

    last = error()
    for sweep in range(1, iters + 1):
        wtv, wtw = w.T @ x, w.T @ w
        for j in range(rank):
            if wtw[j, j] > 0:
                h[j] = nonneg(h[j] + (wtv[j] - wtw[j] @ h) / wtw[j, j])
        vht, hht = x @ h.T, h @ h.T
        for j in range(rank):
            if hht[j, j] > 0:
                w[:, j] = nonneg(w[:, j] + (vht[:, j] - w @ hht[:, j]) / hht[j, j])
        if sweep % 10 == 0 or sweep == iters:  # as scikit-learn, check every 10 sweeps
            now = error()
            done = last - now < tol * max(now, 1e-12)
            last = now
            if done:
                break
    return w.to(v.dtype), h.to(v.dtype), error()


def deep_feature_factorization(
    acts: Tensor, n: int, *, iters: int = 200, tol: float = 1e-4
) -> tuple[Tensor, Tensor, float]:
    r"""Deep Feature Factorization: a layer's activations over a batch as ``n`` non-negative concepts.

    All positions of all images are the columns of one matrix ``A`` ``(K, B * Z)``; each channel is
    shifted to start at 0 (``o_k = \min A^k``, as pytorch-grad-cam's ``dff``) and factorised
    (:func:`nmf`):

    .. math:: A - o \mathbf{1}^\top \approx W H, \qquad W \in \mathbb{R}_{\ge 0}^{K \times n},
              \; H \in \mathbb{R}_{\ge 0}^{n \times B Z}

    Collins, Achanta & Süsstrunk 2018 (https://arxiv.org/abs/1806.10206). Column ``j`` of ``W`` (plus
    the offset ``o``) is concept ``j``'s embedding in the layer's channel space; row ``j`` of ``H``,
    reshaped, says where each image shows it.

    Args:
        acts: ``(B, K, *spatial)`` activations.
        n: number of concepts.
        iters, tol: see :func:`nmf`.

    Returns:
        ``concepts`` ``(K, n)`` (``W + o``), ``maps`` ``(B, n, *spatial)`` (``H``), and the relative
        reconstruction error of the shifted activations,
        :math:`\lVert (A - o) - W H \rVert_F / \lVert A - o \rVert_F`.

    Example:
        >>> A = torch.zeros(1, 3, 2, 2); A[0, 0, 0, 0] = A[0, 1, 0, 0] = 1.0; A[0, 2, 1, 1] = 2.0
        >>> concepts, where, err = deep_feature_factorization(A, 2)
        >>> concepts.shape, where.shape, err < 1e-6
        (torch.Size([3, 2]), torch.Size([1, 2, 2, 2]), True)
    """
    if acts.ndim < 3:
        raise ValueError(f"expected (B, K, *spatial) activations, got {tuple(acts.shape)}")
    b, k = acts.shape[:2]
    spatial = acts.shape[2:]
    mat = acts.transpose(0, 1).reshape(k, -1)  # (K, B * Z)
    mat = torch.nan_to_num(mat)
    offset = mat.amin(dim=1, keepdim=True)
    w, h, err = nmf(mat - offset, n, iters=iters, tol=tol)
    where = h.reshape(n, b, *spatial).transpose(0, 1)
    return w + offset, where, err


def sess_scales(window: int, num: int = 12, step_ratio: float = 2.0 / 7.0) -> list[int]:
    r"""SESS's image scales: shorter sides from the window size up, in steps of ``step_ratio * window``.

    .. math:: s_i = w + i \cdot \mathrm{round}(r w), \qquad i = 0, \dots, N - 1

    Tursun et al. 2022 (https://arxiv.org/abs/2207.01769): 224, 288, ..., 928 for a 224 window, as
    pytorch-grad-cam's ``SESS``.

    Example:
        >>> sess_scales(224, 3)
        [224, 288, 352]
    """
    step = round(window * step_ratio)
    return [window + step * i for i in range(num)]


def sliding_windows(length: int, step: int, window: int) -> list[int]:
    """Start of each window along one axis of ``length``; the last one is shifted back inside.

    As pytorch-grad-cam's ``window_starts``: every window has the full size, so the last may overlap
    its neighbour.

    Example:
        >>> sliding_windows(10, 4, 4), sliding_windows(4, 4, 4)
        ([0, 4, 6], [0])
    """
    starts: list[int] = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def sess_fuse(pasted: Tensor, theta: float = 0.0, pool: str = "mean", eps: float = 1e-6) -> Tensor:
    r"""SESS's fusion of patch maps pasted back on the image: a mean over the patches that cover a pixel.

    .. math:: M_i = \frac{\sum_p P_{p,i} \, [P_{p,i} > \theta]}{\sum_p [P_{p,i} > \theta]}

    (0 where no patch exceeds ``theta``), or ``max_p P_{p,i}`` with ``pool="max"``. Tursun et al.
    2022 (https://arxiv.org/abs/2207.01769), as pytorch-grad-cam's ``_CAMFusion``. A value counts
    when it exceeds ``theta`` by more than ``eps``: resizing a pasted patch leaves values of ~1e-8
    where it should leave 0 (OpenCV's fixed-point resize rounds them to 0, torch's does not), and
    with a strict ``> theta`` such float noise would change how many patches a pixel averages.

    Args:
        pasted: ``(P, *spatial)`` weighted patch maps on the image's frame (0 outside each patch), on
            the ``[0, 1]`` scale.
        theta: values at or below it do not count in the mean.
        pool: ``"mean"`` or ``"max"``.
        eps: the margin above ``theta`` (see above).

    Returns:
        ``(*spatial)``.

    Example:
        >>> sess_fuse(torch.tensor([[0.5, 0.0, 1.0], [0.3, 0.4, 1e-9]]))
        tensor([0.4000, 0.4000, 1.0000])
    """
    if pool == "max":
        return pasted.amax(dim=0)
    if pool != "mean":
        raise ValueError(f"pool must be 'mean' or 'max', not {pool!r}")
    counted = pasted > theta + eps
    total = torch.where(counted, pasted, torch.zeros_like(pasted)).sum(dim=0)
    count = counted.sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def gaussian_blur(maps: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    r"""Gaussian smoothing of ``(B, *spatial)`` maps, one separable pass per axis, borders reflected.

    .. math:: g_j \propto \exp\!\Big(-\frac{(j - (k - 1)/2)^2}{2 \sigma^2}\Big), \quad \sum_j g_j = 1

    As OpenCV's ``GaussianBlur`` (which pytorch-grad-cam's SESS applies with ``k = 11``,
    ``sigma = 5``): the border is reflected without repeating the edge (``BORDER_REFLECT_101``). An
    axis shorter than the kernel's half-width gets the kernel cut to fit (renormalised).

    Example:
        >>> m = torch.zeros(1, 5); m[0, 2] = 1.0
        >>> gaussian_blur(m, 3, 1.0)
        tensor([[0.0000, 0.2741, 0.4519, 0.2741, 0.0000]])
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    out = maps
    for axis in range(1, maps.ndim):
        n = maps.shape[axis]
        half = min(kernel_size // 2, n - 1)
        j = torch.arange(-half, half + 1, dtype=torch.float64)
        g = torch.exp(-(j**2) / (2 * sigma**2))
        g = (g / g.sum()).to(maps)
        moved = out.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, n)
        if half > 0:
            flat = F.pad(flat, (half, half), mode="reflect")
        flat = F.conv1d(flat, g.reshape(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, axis)
    return out


def input_saliency(attribution: Tensor) -> Tensor:
    r"""One value per input position from an attribution with the input's channels.

    .. math:: M_i = \max_c |R_{c,i}|

    The reduction of Simonyan et al. 2014 (https://arxiv.org/abs/1312.6034) for input gradients; camlens
    applies it to every input-space method (guided backpropagation, Guided Grad-CAM), so that their
    ``maps`` are ``(B, *spatial)`` like every other method's, beside the signed ``input_maps``.

    Args:
        attribution: ``(B, C, *spatial)``.

    Returns:
        ``(B, *spatial)``, non-negative.

    Example:
        >>> input_saliency(torch.tensor([[[1.0, -3.0], [-2.0, 0.5]]]))   # C=2 channels, 2 positions
        tensor([[2., 3.]])
    """
    if attribution.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) attributions, got {tuple(attribution.shape)}")
    return attribution.abs().amax(dim=1)


def upsample(maps: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    """Resize ``(B, *spatial)`` maps to ``size`` with the interpolation that fits their dimension.

    Linear for 1-D, bilinear for 2-D, trilinear for 3-D, ``align_corners=False`` (pixel centres
    aligned, as when an image is resized). Values stay within the input's range.

    Example:
        >>> upsample(torch.tensor([[0.0, 1.0]]), (4,))
        tensor([[0.0000, 0.2500, 0.7500, 1.0000]])
    """
    size = tuple(int(s) for s in size)
    if maps.ndim - 1 != len(size):
        raise ValueError(
            f"maps {tuple(maps.shape)} have {maps.ndim - 1} spatial axes, size {size} has {len(size)}"
        )
    return resize(maps.unsqueeze(1), size).squeeze(1)


def resize(x: Tensor, size: Sequence[int], *, antialias: bool = False) -> Tensor:
    """Resize ``(B, C, *spatial)`` tensors (maps or images) to ``size``: linear, bilinear or
    trilinear for 1, 2 or 3 spatial axes, ``align_corners=False``; ``antialias`` (2-D only, like
    torchvision's ``resize``) low-pass filters when shrinking. Returns ``x`` itself at its own size.

    Example:
        >>> resize(torch.tensor([[[0.0, 1.0]]]), (4,))
        tensor([[[0.0000, 0.2500, 0.7500, 1.0000]]])
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None or x.ndim - 2 != len(size):
        raise ValueError(
            f"cannot resize {tuple(x.shape)} to {size}: 1, 2 or 3 spatial axes after (B, C) only"
        )
    return F.interpolate(
        x, size=size, mode=mode, align_corners=False, antialias=antialias and len(size) == 2
    )


def normalize(maps: Tensor) -> Tensor:
    """Min-max scale each ``(B, *spatial)`` map to ``[0, 1]``; returns a new tensor.

    A constant map becomes all ones if its value is positive and all zeros otherwise, so an empty map
    stays empty and a uniform one stays uniform.

    Example:
        >>> normalize(torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
        tensor([[0., 1.],
                [0., 0.]])
    """
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(
        span > 0, (flat - lo) / span.clamp(min=torch.finfo(flat.dtype).tiny), (hi > 0).to(flat)
    )
    return scaled.reshape(maps.shape)
