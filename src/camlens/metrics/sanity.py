"""Sanity checks: does the map depend on the model at all? (Adebayo et al. 2018)

:func:`randomization_test` re-initialises the model's layers one group at a time, from the output down
(cascading randomisation), recomputes the maps after each step and compares them with the original
maps by Spearman rank correlation (:func:`spearman`) and SSIM (:func:`ssim`). A map that stays the
same while the weights it should explain are destroyed explains the input, not the model.

Example:
    >>> import torch
    >>> a = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> spearman(a, a.flip(1)), spearman(a, a ** 2)
    (tensor([-1.]), tensor([1.]))
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camlens.metrics.faithfulness import _filter_axes, _gaussian_kernel1d
from camlens.metrics.localization import MetricResult, _check_maps, _check_same_shape, _nanmean
from camlens.targets import TargetSpec, resolve, select_output

__all__ = ["cascading_groups", "randomization_test", "spearman", "ssim"]

MapFn = Callable[[nn.Module, Tensor, TargetSpec], Any]
_SIMILARITIES = ("spearman", "ssim")
_ROOT = "<root parameters>"


# ---- similarities ------------------------------------------------------------------------------


def _average_ranks(t: Tensor) -> Tensor:
    """``(B, N)`` ranks ``0..N-1`` of each row, tied values sharing the mean of their ranks."""
    b, n = t.shape
    values, perm = t.sort(dim=1, stable=True)
    starts = torch.ones(b, n, dtype=torch.bool, device=t.device)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(1) - 1
    pos = torch.arange(n, device=t.device, dtype=torch.float64).expand(b, n)
    sums = torch.zeros(b, n, device=t.device, dtype=torch.float64).scatter_add_(1, group, pos)
    counts = torch.zeros(b, n, device=t.device, dtype=torch.float64).scatter_add_(
        1, group, torch.ones_like(pos)
    )
    mean_rank = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, perm, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between matching maps, per sample, in torch.

    The Pearson correlation of the ranks of the flattened maps; **tied values get the average of their
    ranks** (the standard definition, as ``scipy.stats.spearmanr``), which matters for CAM maps with
    many zeros after the ReLU. A pair of constant maps scores 1 (their rankings are identical); a
    constant map against a non-constant one scores 0 (undefined correlation, reported as none).

    Args:
        a: ``(B, *spatial)`` maps.
        b: ``(B, *spatial)`` maps, the same shape.

    Returns:
        ``(B,)`` float32 correlations in ``[-1, 1]``.

    Raises:
        ValueError: the shapes differ (naming both).
    """
    a = _check_maps(a)
    b = _check_same_shape(a, b, "maps")
    n = a.shape[0]
    ra = _average_ranks(a.detach().reshape(n, -1).double())
    rb = _average_ranks(b.detach().reshape(n, -1).double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    va, vb = (ra * ra).sum(1), (rb * rb).sum(1)
    cov = (ra * rb).sum(1)
    eps = 1e-12
    rho = cov / (va * vb).sqrt().clamp(min=eps)
    const_a, const_b = va <= eps, vb <= eps
    rho = torch.where(
        const_a & const_b,
        torch.ones_like(rho),
        torch.where(const_a | const_b, torch.zeros_like(rho), rho),
    )
    return rho.clamp(-1, 1).float()


def ssim(
    a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861),
    per sample, in torch.

    The mean SSIM over all positions of a Gaussian window (11 taps, sigma 1.5, the paper's values), with
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and ``L = data_range`` (1 for maps in ``[0, 1]``). The window
    is applied separably along every spatial axis, "valid" (only positions where it fits, as the
    paper's reference code); along an axis shorter than ``window`` it shrinks to the largest odd length
    that fits. Two identical maps, constant ones included, score 1.

    Args:
        a: ``(B, *spatial)`` maps in ``[0, data_range]``.
        b: ``(B, *spatial)`` maps, the same shape.

    Returns:
        ``(B,)`` float32 values in ``[-1, 1]``.

    Raises:
        ValueError: the shapes differ (naming both).
    """
    a = _check_maps(a)
    b = _check_same_shape(a, b, "maps")
    smallest = min(a.shape[1:])
    size = min(window, smallest if smallest % 2 else smallest - 1)
    size = max(size, 1)
    k = _gaussian_kernel1d(sigma, size, a.device, torch.float64)
    x, y = a.detach()[:, None].double(), b.detach()[:, None].double()

    def filt(t: Tensor) -> Tensor:
        return _filter_axes(t, k, None)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.reshape(a.shape[0], -1).mean(1).float()


# ---- cascading randomisation ------------------------------------------------------------------


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def cascading_groups(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """The module names :func:`randomization_test` re-initialises, in order: top (output side) first.

    Default grouping: the model's top-level children that hold parameters, where a child that is a
    plain container (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) is replaced by its own
    children, recursively, and a model with a single such child is entered (a wrapper around a
    network). So a ResNet gives ``fc, layer4.2, layer4.1, ..., bn1, conv1``. Parameters registered on
    the model itself (a ViT's ``cls_token``) form a last group, ``"<root parameters>"``. The order is
    the reverse of registration (``named_modules``) order, taken to be the forward order.

    Args:
        model: the network.
        layers: module names to randomise instead; they are sorted into the same top-first order.

    Raises:
        ValueError: an unknown name, or a module without parameters.
    """
    named = dict(model.named_modules())
    order = {n: i for i, n in enumerate(named)}
    if layers is not None:
        names = list(layers)
        if not names:
            raise ValueError("layers=[] names no module; pass None for the default grouping")
        for n in names:
            if n not in named:
                raise ValueError(f"layer {n!r} is not a submodule of {type(model).__name__}")
            if not _has_params(named[n]):
                raise ValueError(f"layer {n!r} has no parameters to randomise")
        return sorted(dict.fromkeys(names), key=lambda n: -order[n])

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

    def expand(prefix: str, module: nn.Module) -> list[str]:
        out: list[str] = []
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not _has_params(child):
                continue
            if isinstance(child, containers):
                out.extend(expand(f"{full}.", child))
            else:
                out.append(full)
        return out

    root: nn.Module = model
    prefix = ""
    while True:
        kids = [(n, c) for n, c in root.named_children() if _has_params(c)]
        own = any(True for _ in root.parameters(recurse=False))
        if len(kids) == 1 and not own and not isinstance(kids[0][1], containers):
            prefix = f"{prefix}{kids[0][0]}."
            root = kids[0][1]
            continue
        break
    groups = expand(prefix, root)
    if not groups and _has_params(root):
        groups = [prefix[:-1]] if prefix else []
    groups.sort(key=lambda n: -order[n])
    if any(True for _ in model.parameters(recurse=False)):
        groups.append(_ROOT)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    return groups


def _reinit(module: nn.Module, recurse: bool = True) -> None:
    """Re-initialise ``module``'s parameters: ``reset_parameters()`` where a submodule has it, else a
    normal draw with each tensor's own mean and standard deviation (0.02 for a constant tensor)."""
    mods = module.modules() if recurse else iter([module])
    with torch.no_grad():
        for m in mods:
            own = [
                p
                for p in m.parameters(recurse=False)
                if not isinstance(p, nn.parameter.UninitializedParameter)
            ]
            if not own:
                continue
            reset = getattr(m, "reset_parameters", None)
            if recurse and callable(reset):
                reset()
                continue
            for p in own:
                mean = float(p.float().mean()) if p.numel() else 0.0
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                p.normal_(mean, std if std > 0 else 0.02)


def _map_fn(method: Any) -> MapFn:
    from camlens.methods import BaseCAM

    if isinstance(method, BaseCAM):

        def run(model: nn.Module, x: Tensor, target: TargetSpec) -> Any:
            return method.with_model(model)(x, target=target)

        return run
    if callable(method):
        return method
    raise TypeError(
        f"method must be a camlens method (with .with_model) or a callable (model, x, target) -> maps, "
        f"not {type(method).__name__}"
    )


def _as_maps(out: Any) -> Tensor:
    maps = getattr(out, "maps", out)
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"the method returned {type(out).__name__}, not maps (a tensor or a CAMResult)"
        )
    return maps.detach().float()


def randomization_test(
    method: Any,
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    layers: Sequence[str] | None = None,
    similarity: Sequence[str] = ("spearman", "ssim"),
    seed: int = 0,
    output: Any = None,
    return_maps: bool = False,
) -> MetricResult:
    """Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018, "Sanity Checks for
    Saliency Maps", https://arxiv.org/abs/1810.03292, sec. 3.1).

    The model is deep-copied once (the caller's model is never modified); the copy's layer groups
    (:func:`cascading_groups`) are re-initialised one at a time from the output down, and after each
    step the maps are recomputed on the copy and compared with the original maps, per sample. A method
    that passes the check loses its similarity as layers are randomised.

    Choices the paper leaves open:
        * Granularity: one step per group of :func:`cascading_groups` (top-level children, containers
          expanded), or per name in ``layers``.
        * Re-initialisation: each module's ``reset_parameters()`` (PyTorch's default init) where it has
          one, else a normal draw with the tensor's own mean and std; the RNG is seeded with
          ``seed + step`` inside :func:`torch.random.fork_rng`, so the global RNG is untouched and runs
          are reproducible. BatchNorm is reset too (weights 1, biases 0, running statistics cleared).
        * The target is fixed on the original model (``None``: its top class for each sample) and
          explained again on every randomised copy, even where the copy predicts another class.
        * Maps are compared as the method returns them (camlens maps: in ``[0, 1]``, after the ReLU;
          Adebayo et al. also compare absolute values, which is the same for such maps).
        * Spearman with average ranks for ties; SSIM with an 11-tap Gaussian window, sigma 1.5, on
          ``[0, 1]`` (see :func:`spearman`, :func:`ssim`).

    Args:
        method: a camlens method object (its ``with_model`` rebuilds it on the copy with the same layer
            names), or a callable ``(model, x, target) -> maps`` (a tensor ``(B, *spatial)`` or an object
            with ``.maps``).
        model: the model to test; the method's maps on it are the reference.
        x: ``(B, C, *spatial)`` inputs.
        target: as in :func:`camlens.targets.resolve`.
        layers: module names to randomise (default: :func:`cascading_groups`).
        similarity: which of ``"spearman"`` and ``"ssim"`` to compute.
        seed: base seed of the re-initialisation.
        output: output selector for resolving the target (default: the method's own ``output``).
        return_maps: keep the maps of every step in ``details["maps"]``.

    Returns:
        :class:`MetricResult` ``"randomization_test"``: ``per_sample`` (B,) the first requested
        similarity after the last step (the fully randomised model), ``summary`` its mean (lower means
        the method is more sensitive to the model: better); ``details["layers"]`` the group randomised
        at each step, ``details["spearman"]`` / ``details["ssim"]`` ``(steps, B)``,
        ``details["mean_spearman"]`` / ``details["mean_ssim"]`` lists (one mean per step),
        ``details["original_maps"]``, and ``details["maps"]`` ``(steps, B, *spatial)`` when asked.

    Raises:
        ValueError: an unknown similarity or layer name.
    """
    sims = list(dict.fromkeys(similarity))
    if not sims or any(s not in _SIMILARITIES for s in sims):
        raise ValueError(
            f"similarity must be a non-empty list of {', '.join(map(repr, _SIMILARITIES))}, got {similarity!r}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    groups = cascading_groups(model, layers)
    run = _map_fn(method)
    sel = output if output is not None else getattr(method, "output", None)
    with torch.inference_mode():
        logits = select_output(model(x), sel)
    resolved = resolve(target, logits)
    fixed: TargetSpec = resolved.classes.clone() if resolved.classes is not None else target
    del logits

    original = _as_maps(run(model, x, fixed))
    fns = {"spearman": spearman, "ssim": ssim}
    scores: dict[str, list[Tensor]] = {s: [] for s in sims}
    kept: list[Tensor] = []
    clone = copy.deepcopy(model)
    named = dict(clone.named_modules())
    cuda = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    for step, name in enumerate(groups):
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed + step)
            if name == _ROOT:
                _reinit(clone, recurse=False)
            else:
                _reinit(named[name])
        maps = _as_maps(run(clone, x, fixed))
        if maps.shape != original.shape:
            raise ValueError(
                f"maps of shape {tuple(maps.shape)} after randomising {name!r} differ from the original {tuple(original.shape)}"
            )
        for s in sims:
            scores[s].append(fns[s](original, maps))
        if return_maps:
            kept.append(maps)
    table = {s: torch.stack(v) for s, v in scores.items()}
    per = table[sims[0]][-1]
    details: dict[str, Any] = {"layers": groups, "original_maps": original, "similarity": sims[0]}
    for s, t in table.items():
        details[s] = t
        details[f"mean_{s}"] = [_nanmean(row) for row in t]
    if return_maps:
        details["maps"] = torch.stack(kept)
    return MetricResult("randomization_test", per, _nanmean(per), details, higher_is_better=False)
