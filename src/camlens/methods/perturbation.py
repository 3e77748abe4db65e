"""Methods that weigh channels by perturbing the model: Score-CAM and Ablation-CAM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods.base import BaseCAM, MapContext
from camlens.targets import ClassTarget, accepts_any_output, resolve, select_output

__all__ = ["AblationCAM", "ScoreCAM"]


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be an int >= 1 (how many perturbed copies run at once), got {batch_size!r}"
        )
    return batch_size


def _sample_target(ctx: MapContext, b: int) -> Callable[[Tensor], Tensor]:
    """The target of sample ``b`` as a callable on a batch of perturbed copies of that sample."""
    if ctx.target.classes is not None:
        return ClassTarget(int(ctx.target.classes[b]))
    spec = ctx.spec
    if not callable(spec):
        raise ValueError("this method needs class targets or a callable target")
    return spec  # documented: a callable target must score each row on its own


class ScoreCAM(BaseCAM):
    r"""Score-CAM (Wang et al., CVPR-W 2020, https://arxiv.org/abs/1910.01279).

    Each activation channel, upsampled to the input and min-max normalised to ``[0, 1]``, masks the
    input; the channel's weight is its increase of confidence (the paper's CIC, eq. 5): the target's
    score on the masked input minus its score on the baseline image ``B``:

    .. math:: w_k = y^c\big(X \odot H_k + B \odot (1 - H_k)\big) - y^c(B), \qquad
              L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    ``y^c`` is the softmax-free score (the logit for class targets), as for every camlens method; the
    softmax of the paper's code is not applied. The baseline ``B`` is the all-zeros image by default
    (masked-out pixels are set to 0, as in the paper); ``subtract_baseline=False`` uses the raw scores
    ``y^c(X \odot H_k + ...)`` instead. The masked inputs run batched under inference mode.

    Args:
        batch_size: masked inputs per forward pass; bounds memory.
        top_k: keep only the ``top_k`` channels with the largest mean activation per sample (the rest get
            weight 0). An approximation that trades accuracy for speed; ``None`` (default) uses all.
        baseline: ``"zeros"`` or a tensor broadcastable to one input ``(C, *spatial)``.
        subtract_baseline: subtract the baseline image's score from each weight (default, as in CIC).

    A callable target must score each row of a batch on its own (it sees copies of one sample).
    """

    name = "scorecam"
    aliases = ("score-cam",)
    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        batch_size: int = 32,
        top_k: int | None = None,
        baseline: str | Tensor = "zeros",
        subtract_baseline: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.subtract_baseline = subtract_baseline
        self.batch_size = _check_batch_size(batch_size)
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k must be None (all channels) or an int >= 1, got {top_k!r}")
        self.top_k = top_k
        if isinstance(baseline, str) and baseline != "zeros":
            raise ValueError(f"baseline must be 'zeros' or a tensor, not {baseline!r}")
        self.baseline = baseline

    def _options(self) -> dict[str, Any]:
        return {
            **super()._options(),
            "batch_size": self.batch_size,
            "top_k": self.top_k,
            "baseline": self.baseline,
        }

    def _terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        x = ctx.x
        b, k = acts.shape[:2]
        if self.top_k is not None and self.top_k > k:
            raise ValueError(
                f"top_k={self.top_k} is larger than the {k} channels of layer {ctx.layer!r}; use 1 to {k}"
            )
        size = x.shape[2:]
        weights = torch.zeros(b, k, device=acts.device)
        base = None if isinstance(self.baseline, str) else self.baseline.to(x)
        with torch.inference_mode():
            for i in range(b):
                chans = torch.arange(k, device=acts.device)
                if self.top_k is not None:
                    chans = acts[i].flatten(1).mean(1).topk(self.top_k).indices
                score_fn = _sample_target(ctx, i)
                pass_any = accepts_any_output([score_fn])
                base_score = 0.0
                if self.subtract_baseline:
                    xb = (
                        torch.zeros_like(x[i : i + 1])
                        if base is None
                        else base.expand_as(x[i : i + 1])
                    )
                    out_b = select_output(self.model(xb), self.output, passthrough=pass_any)
                    base_score = float(resolve(score_fn, out_b).scores[0])
                for start in range(0, len(chans), self.batch_size):
                    idx = chans[start : start + self.batch_size]
                    masks = maps.normalize(maps.upsample(acts[i, idx], size)).to(x.dtype)[:, None]
                    xin = x[i : i + 1] * masks
                    if base is not None:
                        xin = xin + base * (1 - masks)
                    out = select_output(self.model(xin), self.output, passthrough=pass_any)
                    scores = resolve(score_fn, out).scores.float().to(acts.device)
                    weights[i, idx] = scores - base_score
        if ctx.counterfactual:
            weights = -weights
        return maps.channel_weighted(acts, weights)


class _HeadSplit:
    """The model cut at a layer with torch.fx: ``prefix(x)`` computes everything the rest needs,
    ``head(*values)`` the rest. Only the head runs again on ablated activations."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        class _Tracer(torch.fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname == layer or super().is_leaf_module(m, qualname)

        tracer = _Tracer()
        graph = tracer.trace(model)
        nodes = list(graph.nodes)
        hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
        if len(hits) != 1:
            raise ValueError(f"layer {layer!r} is called {len(hits)} times in the traced graph")
        cut = hits[0]
        pre = set(nodes[: cut + 1])
        needed: list[torch.fx.Node] = [nodes[cut]]
        for n in nodes[cut + 1 :]:
            for inp in n.all_input_nodes:
                if inp in pre and inp not in needed and inp.op != "get_attr":
                    needed.append(inp)
        # prefix: the original graph up to the cut, returning the needed values
        prefix = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in nodes[: cut + 1]:
            env[n] = prefix.node_copy(n, lambda a: env[a])
        prefix.output(tuple(env[n] for n in needed))
        # head: placeholders for the needed values, then the rest of the graph
        head = torch.fx.Graph()
        env2: dict[torch.fx.Node, torch.fx.Node] = {}
        for j, n in enumerate(needed):
            env2[n] = head.placeholder(f"cut_{j}")
        for n in nodes[cut + 1 :]:
            for inp in n.all_input_nodes:
                if inp not in env2 and inp.op == "get_attr":
                    env2[inp] = head.node_copy(inp, lambda a: env2[a])
            env2[n] = head.node_copy(n, lambda a: env2[a])
        self.prefix = torch.fx.GraphModule(tracer.root, prefix)
        self.head = torch.fx.GraphModule(tracer.root, head)


class AblationCAM(BaseCAM):
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html).

    A channel's weight is the relative drop of the target score when that channel is zeroed:

    .. math:: w_k = \frac{y^c - y^c_k}{y^c}, \qquad L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    Only the part of the model after the layer runs on the ablated activations: the model is split at
    the layer with ``torch.fx`` where it traces; otherwise (or with ``split="hook"``) a forward hook
    substitutes the layer's output and the whole model runs per batch of ablations. A score of exactly 0
    is not divided by. For a GAP + linear head, ``w_k = W_{c,k} \bar{A}^k / y^c`` in closed form.

    Args:
        batch_size: ablated copies per head run; bounds memory.
        split: ``"auto"`` (fx, falling back to the hook), ``"fx"`` or ``"hook"``.
    """

    name = "ablationcam"
    aliases = ("ablation-cam",)
    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        batch_size: int = 128,
        split: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.batch_size = _check_batch_size(batch_size)
        if split not in ("auto", "fx", "hook"):
            raise ValueError(f"split must be 'auto', 'fx' or 'hook', not {split!r}")
        self.split = split
        self._splits: dict[str, _HeadSplit | None] = {}
        self._values: tuple[Any, ...] | None = None
        self.split_used: str | None = None

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "batch_size": self.batch_size, "split": self.split}

    def _get_split(self, layer: str) -> _HeadSplit | None:
        if self.split == "hook":
            return None
        if layer not in self._splits:
            try:
                self._splits[layer] = _HeadSplit(self.model, layer)
            except Exception as e:  # fx cannot trace every model: fall back to the hook
                if self.split == "fx":
                    raise ValueError(
                        f"torch.fx could not split the model at {layer!r}: {e}; use split='hook'"
                    ) from e
                self._splits[layer] = None
        return self._splits[layer]

    def _forward(self, x: Tensor) -> Any:
        names = self.layer_names or []
        split = self._get_split(names[0]) if len(names) == 1 else None
        if split is None:
            self._values = None
            return super()._forward(x)
        try:
            self._values = split.prefix(x)
            return split.head(*self._values)
        except Exception as e:
            raise self._model_error(x, e) from e

    def _terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        b, k = acts.shape[:2]
        y = ctx.target.scores.detach().float()
        weights = torch.zeros(b, k, device=acts.device)
        raw_act = ctx.capture.activations[
            ctx.layer
        ].detach()  # the layer's own layout (before reshape)
        if raw_act.shape[1] == k and raw_act.ndim == acts.ndim:
            shape = (k, *([1] * (raw_act.ndim - 2)))  # channels first
        elif raw_act.shape[-1] == k:
            shape = (*([1] * (raw_act.ndim - 2)), k)  # channels last (tokens)
        else:
            raise ValueError(
                f"cannot find the {k} channels in layer {ctx.layer!r}'s output {tuple(raw_act.shape)}"
            )
        eye = torch.eye(k, device=acts.device, dtype=torch.bool)
        with torch.inference_mode():
            for i in range(b):
                score_fn = _sample_target(ctx, i)
                for start in range(0, k, self.batch_size):
                    keep = ~eye[
                        start : start + self.batch_size
                    ]  # (n, K): False at the ablated channel
                    n = keep.shape[0]
                    ablated = raw_act[i : i + 1] * keep.reshape(n, *shape).to(raw_act.dtype)
                    out = select_output(
                        self._run_head(ctx.x, i, ablated, ctx.layer),
                        self.output,
                        passthrough=accepts_any_output([score_fn]),
                    )
                    weights[i, start : start + n] = resolve(score_fn, out).scores.float()
        denom = torch.where(y != 0, y, torch.ones_like(y))[:, None]
        weights = (y[:, None] - weights) / denom
        if ctx.counterfactual:
            weights = -weights
        return maps.channel_weighted(acts, weights)

    def _run_head(self, x: Tensor, i: int, ablated: Tensor, layer: str) -> Any:
        n = ablated.shape[0]
        if self._values is not None:
            self.split_used = "fx"
            b = x.shape[0]
            rest = [
                v[i : i + 1].expand(n, *v.shape[1:]).contiguous()
                if isinstance(v, Tensor) and v.ndim and v.shape[0] == b
                else v
                for v in self._values[1:]
            ]
            split = self._splits[layer]
            assert split is not None
            return split.head(ablated, *rest)
        self.split_used = "hook"
        module = self.model.get_submodule(layer)

        def substitute(_m: nn.Module, _i: Any, output: Any) -> Any:
            if isinstance(output, Tensor):
                return ablated
            return (ablated, *output[1:])

        handle = module.register_forward_hook(substitute)
        try:
            return self.model(x[i : i + 1].expand(n, *x.shape[1:]))
        finally:
            handle.remove()
