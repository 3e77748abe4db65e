"""Methods for vision transformers that read attention: LeGrad."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import (
    AttentionCapture,
    LayerCapture,
    LayerSpec,
    _is_norm,
    attention_blocks,
    input_leaf,
    joined_hooks,
    paused,
    resolve_layers,
)
from camlens.maps import normalize, upsample
from camlens.methods.base import BaseCAM, model_error, run_model
from camlens.methods.registry import register
from camlens.reshape import to_spatial
from camlens.result import CAMResult
from camlens.targets import (
    ClassTarget,
    TargetSpec,
    accepts_any_output,
    resolve,
    select_output,
    top_k_targets,
)

__all__ = ["LeGrad"]

HeadSpec = str | Sequence[str] | Callable[[nn.Module, Tensor], Tensor] | None


class _HeadRecorder:
    """Records which norms and linear layers outside the blocks ran after the last block finished."""

    def __init__(self, model: nn.Module, blocks: list[str]) -> None:
        def inside(name: str) -> bool:
            return any(name == b or name.startswith(b + ".") for b in blocks)

        self.blocks = set(blocks)
        self.watch = [
            (n, m)
            for n, m in model.named_modules()
            if n and not inside(n) and (isinstance(m, nn.Linear) or _is_norm(m))
        ]
        self.block_modules = [(n, model.get_submodule(n)) for n in blocks]
        self.events: list[tuple[str, str]] = []

    def install(self, own: Callable[[Callable[..., Any]], Callable[..., Any]]) -> list[Any]:
        handles = []
        for name, module in [*self.block_modules, *self.watch]:
            kind = "block" if name in self.blocks else "module"

            def hook(_m: nn.Module, _i: Any, _o: Any, name: str = name, kind: str = kind) -> None:
                self.events.append((kind, name))

            handles.append(module.register_forward_hook(own(hook)))
        return handles

    def head(self, model: nn.Module) -> tuple[list[str], str]:
        """Names of the norms (in order) and of the linear classifier that follow the last block."""
        last = max((i for i, (k, _) in enumerate(self.events) if k == "block"), default=-1)
        after = [n for k, n in self.events[last + 1 :] if k == "module"]
        linears = [n for n in after if isinstance(model.get_submodule(n), nn.Linear)]
        if not linears:
            raise ValueError(
                "LeGrad scores every block's tokens with the model's head, but no linear layer runs "
                "after the last transformer block; pass head=('norm', 'head') (the modules applied "
                "to the mean-pooled tokens) or a callable head(model, tokens) -> logits"
            )
        norms = [n for n in after[: after.index(linears[-1])] if n not in linears]
        return list(dict.fromkeys(norms)), linears[-1]


@register("legrad", aliases=("le-grad",))
class LeGrad(BaseCAM):
    r"""LeGrad (Bousselham et al., ICCV 2025, https://arxiv.org/abs/2404.03214), for vision transformers.

    For every transformer block ``l``, the target's score ``s^l`` computed from that block's own tokens
    (mean-pooled, then the model's final norm and classifier) is differentiated with respect to the
    block's attention probabilities ``P^l``; the positive gradients, averaged over heads and queries,
    rate each key token (:func:`camlens.maps.legrad_relevance`), and the map averages the blocks:

    .. math:: s^l = f_{\text{head}}\Big(\frac1N \sum_t z^l_t\Big), \qquad
              M = \frac1L \sum_l \frac{1}{H N_q} \sum_{h,q}
              \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial P^l_{h,q,\cdot}}\Big)

    The prefix keys (class, distillation, register tokens) are dropped and the patch keys laid out
    on their grid, found as for every token layer (:mod:`camlens.reshape`; ``reshape=`` overrides
    it). ``maps`` is ``M`` upsampled and scaled; ``raw`` is ``M``; with several blocks,
    ``raw_per_layer`` holds each block's map.

    This is torchcam's ``LeGrad`` (mean pooling of all tokens, as the paper's code; layers averaged)
    on any ViT: the attention is read where it is computed (``nn.MultiheadAttention``,
    ``F.scaled_dot_product_attention``, or an explicit softmax; see
    :class:`camlens.capture.AttentionCapture`), so torchvision, timm and Hugging Face ViTs work
    unchanged. One forward, recorded from the input; one backward per block and target, each
    through that block only.

    Args:
        layer: the blocks; ``None`` (default) for every block: the parents of the attention modules
            (:func:`camlens.capture.attention_blocks`), as the paper aggregates all layers (torchcam
            has no default; the paper's code starts at the second-to-last block, ``layer_index=-2``:
            pass the last two blocks for that).
        head: how a block's tokens are scored. ``None``: the norms and the linear classifier that run
            after the last block in the model's own forward (``encoder.ln`` and ``heads.head`` of
            torchvision's ViT, ``norm`` and ``head`` of timm's, ``layernorm`` and ``classifier`` of
            Hugging Face's), applied to the mean of the tokens. Or the names of the modules to apply,
            in order, to the mean-pooled tokens; or a callable ``head(model, tokens) -> logits``.

    A callable target receives the head's logits ``(B, C)`` of each block (and, for ``None`` /
    ``"top-k"``, the classes come from the model's output). Only 2-D inputs; a model without
    attention is refused. ``eigen_smooth`` is refused (the map is not a sum over channels).
    """

    model_kind = "transformer"
    spatial_dims = (2,)

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, head: HeadSpec = None, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        if layer is None and not attention_blocks(model):
            raise ValueError(
                f"LeGrad explains vision transformers through their attention, and "
                f"{type(model).__name__} has no attention module; use a CAM method (e.g. GradCAM) for "
                "this model"
            )
        if isinstance(head, str):
            head = (head,)
        if head is not None and not callable(head):
            names = list(head)
            if not names or not all(isinstance(n, str) for n in names):
                raise TypeError(
                    "head must be None, module names (e.g. ('norm', 'head')) or a callable "
                    f"head(model, tokens) -> logits, not {head!r}"
                )
            resolve_layers(model, names)  # unknown names fail here, with the closest ones
        self.head = head

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        super()._check_call(counterfactual, eigen_smooth)
        if eigen_smooth:
            raise ValueError(
                "LeGrad's map averages attention relevance over blocks, not channels; eigen_smooth "
                "has no meaning here"
            )

    def _blocks(self) -> list[tuple[str, nn.Module]]:
        names = self._layer_names if self._layer_names is not None else attention_blocks(self.model)
        if not names:
            raise ValueError(f"{type(self.model).__name__} has no attention blocks for LeGrad")
        return resolve_layers(self.model, names)

    def _head_fn(self, recorder: _HeadRecorder | None) -> Callable[[Tensor], Tensor]:
        model = self.model
        spec = self.head
        if callable(spec):
            fn = spec
            return lambda tokens: fn(model, tokens)
        if spec is not None:
            mods = [m for _, m in resolve_layers(model, list(spec))]
        else:
            assert recorder is not None
            norms, linear = recorder.head(model)
            mods = [model.get_submodule(n) for n in [*norms, linear]]

        def head(tokens: Tensor) -> Tensor:
            z = tokens.mean(dim=1)
            for m in mods:
                z = m(z)
            return z

        return head

    def _run(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        *,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        blocks = self._blocks()
        names = [n for n, _ in blocks]
        self._warn_training()
        recorder = _HeadRecorder(self.model, names) if self.head is None else None
        leaf = input_leaf(x, "LeGrad")
        with (
            LayerCapture(blocks, grad=True, full_graph=True) as cap,
            AttentionCapture(blocks) as att,
            joined_hooks() as own,
        ):
            handles = recorder.install(own) if recorder is not None else []
            try:
                out = run_model(self.model, leaf)
            finally:
                for h in handles:
                    h.remove()
        att.check_called()
        logits = select_output(out, self.output, passthrough=accepts_any_output(targets))
        specs: list[Any] = top_k_targets(targets, logits) if isinstance(targets, str) else targets
        head = self._head_fn(recorder)
        tokens = {n: cap.activations[n] for n in names}
        try:
            with paused(), torch.enable_grad():
                head_out = {n: head(t) for n, t in tokens.items()}
        except Exception as e:
            raise model_error(x, e) from e
        results = []
        for spec in specs:
            resolved = self._resolve_target(spec, logits, batch=x.shape[0])
            target: Any = ClassTarget(resolved.classes) if resolved.classes is not None else spec
            if not callable(target):
                raise ValueError("LeGrad needs class targets or a callable target")
            raws: dict[str, Tensor] = {}
            for n in names:
                probs = att.attentions[n]
                s = resolve(target, head_out[n]).scores
                s = -s if counterfactual else s
                (g,) = torch.autograd.grad(s.sum(), probs, retain_graph=True, allow_unused=True)
                g = torch.zeros_like(probs) if g is None else g
                rel = maps.legrad_relevance(g.float())
                n_tokens = tokens[n].shape[1] if tokens[n].ndim == 3 else -1
                if rel.shape[1] != n_tokens:
                    raise ValueError(
                        f"block {n!r} attends over {rel.shape[1]} keys but outputs {n_tokens} "
                        "tokens; LeGrad needs self-attention over the block's tokens"
                    )
                grid = to_spatial(
                    rel.unsqueeze(-1), x, name=n, model=self.model, reshape=self.reshape
                )
                raws[n] = grid[:, 0].detach()
            raw = torch.stack(list(raws.values())).mean(0)
            size = x.shape[2:]
            self._warn_empty({"+".join(names): raw}, {})
            several = len(names) > 1
            results.append(
                CAMResult(
                    maps=normalize(upsample(raw, size)).float(),
                    raw=raw,
                    scores=resolved.scores.detach(),
                    targets=resolved.classes,
                    layer="+".join(names),
                    method=self._label(counterfactual, eigen_smooth),
                    per_layer={n: normalize(upsample(r, size)) for n, r in raws.items()}
                    if several
                    else {},
                    raw_per_layer=raws if several else {},
                    logits=logits.detach() if isinstance(logits, Tensor) else None,
                )
            )
        return results
