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

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KPCA_KERNELS",
    "ablation_weights",
    "channel_weighted",
    "eigencam_map",
    "elementwise_terms",
    "fem_terms",
    "fullgrad_bias_terms",
    "fullgrad_saliency",
    "gradcam_weights",
    "gradcampp_weights",
    "hirescam_map",
    "hirescam_terms",
    "input_saliency",
    "kpca_map",
    "layercam_map",
    "layercam_terms",
    "legrad_relevance",
    "normalize",
    "product_fusion",
    "scorecam_weights",
    "shapleycam_weights",
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
    mat = acts.reshape(b, k, -1).transpose(1, 2).double()  # (B, Z, K)
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
    energy = mat.sum(dim=2)
    energy = energy - energy.mean(dim=1, keepdim=True)
    sign = torch.where((proj * energy).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj)
    return (proj * sign).to(acts.dtype).reshape(b, *spatial)


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
    b, k = acts.shape[:2]
    spatial = acts.shape[2:]
    mat = acts.reshape(b, k, -1).transpose(1, 2).double()  # (B, Z, K)
    centred = mat - mat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:, 0, :].unsqueeze(-1)  # (B, Z, 1)
    proj = proj.squeeze(-1)
    energy = mat.sum(dim=2)
    energy = energy - energy.mean(dim=1, keepdim=True)
    sign = torch.where((proj * energy).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj)
    return (proj * sign).to(acts.dtype).reshape(b, *spatial)


def scorecam_weights(masked_scores: Tensor, baseline_scores: Tensor | float = 0.0) -> Tensor:
    r"""Score-CAM channel weights: each channel's increase of confidence (CIC).

    .. math:: w_k = y^c\big(X \odot H_k + B \odot (1 - H_k)\big) - y^c(B)

    where ``H_k`` is channel ``k`` upsampled to the input and min-max scaled to ``[0, 1]``, and ``B``
    the baseline image. Wang et al. 2020, eq. 5 (https://arxiv.org/abs/1910.01279).

    Args:
        masked_scores: ``(B, K)`` target scores on the masked inputs.
        baseline_scores: ``(B,)`` target scores on the baseline image, or a number (0 gives the raw
            scores as weights).

    Returns:
        ``(B, K)`` weights.

    Example:
        >>> scorecam_weights(torch.tensor([[3.0, 1.0]]), torch.tensor([2.0]))
        tensor([[ 1., -1.]])
    """
    if masked_scores.ndim != 2:
        raise ValueError(f"expected (B, K) masked scores, got {tuple(masked_scores.shape)}")
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
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None:
        raise ValueError(f"only 1, 2 or 3 spatial axes are supported, got {len(size)}")
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)


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
