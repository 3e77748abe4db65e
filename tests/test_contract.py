"""The contract every entry of ``camlens.METHODS`` keeps, generated from the registry.

A method registered with ``@register`` is checked here with no list to update: batched equals
per-sample, ``for_targets`` equals separate calls, ``with_model`` keeps every option, hooks are gone
after success and after an error, any memory layout and number of spatial axes, threads sharing one
model, a model changed between calls, and bad input refused with one clear error.

Each method runs on the test model of the kind it declares (``cls.model_kind``, see
``conftest.MODELS``): GapNet for ``"any"``, GapViT (the same layout with transformer blocks) for
``"transformer"``. The behaviours below (a failing head, a model that breaks after one forward, a slow
head) are mixins, so they apply to either. A method refuses inputs whose number of spatial axes is
not in its ``spatial_dims`` with a ``ValueError``, and a transformer method refuses a CNN.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.reshape import to_spatial
from conftest import MODELS, Block, GapNet, hook_count, make

METHODS = list(camlens.METHODS.values())
ids = [c.name for c in METHODS]

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


def build(cls: type, model: nn.Module, **options: Any) -> camlens.BaseCAM:
    """The method on ``model``: at ``features`` (GapNet's conv stack), or at its default layers
    where that is not a layer it explains (input-space methods; the blocks of a transformer), with
    the cheap options of ``conftest.CHEAP`` under the given ones."""
    explicit = cls.takes_layer and cls.model_kind == "any"
    return make(cls, model, layer="features" if explicit else None, **options)  # type: ignore[no-any-return]


def net_for(cls: type, mixin: type | None = None, **kwargs: Any) -> nn.Module:
    """The test model of ``cls``'s kind in eval mode, with a behaviour ``mixin`` if given."""
    base = MODELS[cls.model_kind]
    kind = base if mixin is None else type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})
    return kind(**kwargs).eval()


def replace_inner_module(net: nn.Module) -> None:
    """Swap a module inside the explained layers for a new one (other weights, same shapes)."""
    if isinstance(net, GapNet):
        net.features[2] = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    else:
        net.features[2] = Block(8)


def same(a: camlens.CAMResult, b: camlens.CAMResult, tol: float = 1e-5) -> None:
    """Two results agree: maps, raw maps, scores, targets and input-space attributions."""
    torch.testing.assert_close(
        a.raw, b.raw, rtol=1e-4, atol=tol * max(1.0, float(b.raw.abs().max()))
    )
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)
    assert (a.targets is None) == (b.targets is None)
    if a.targets is not None:
        assert a.targets.tolist() == b.targets.tolist()
    assert (a.input_maps is None) == (b.input_maps is None)
    if a.input_maps is not None:
        torch.testing.assert_close(a.input_maps, b.input_maps, rtol=1e-4, atol=1e-6)


def test_every_method_is_registered_under_its_name_and_aliases() -> None:
    assert len(METHODS) == len(set(ids)) >= 11
    for cls in METHODS:
        assert issubclass(cls, camlens.BaseCAM)
        assert camlens.get_method(cls.name) is cls
        for alias in cls.aliases:
            assert camlens.get_method(alias.upper()) is cls
        assert (cls.__doc__ or "").strip(), f"{cls.__name__} needs a docstring with its formula"
    with pytest.raises(ValueError, match="known methods: gradcam"):
        camlens.get_method("grad-came")


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_logits_are_the_models_own_output(cls: type) -> None:
    """``CAMResult.logits`` (what predictions are read from) is the model's output for the batch."""
    net = net_for(cls)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    for res in [build(cls, net)(x, target=[0, 3]), *build(cls, net).for_targets(x, [1, 2])]:
        assert res.logits is not None, f"{cls.name} keeps no logits"
        torch.testing.assert_close(res.logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_batched_equals_per_sample(cls: type) -> None:
    net = net_for(cls)
    x = torch.rand(3, 3, 16, 16)
    target = [0, 3, 1]
    batch = build(cls, net)(x, target=target)
    for i in range(3):
        same(
            build(cls, net)(x[i : i + 1], target=target[i]),
            camlens.CAMResult(
                batch.maps[i : i + 1],
                batch.raw[i : i + 1],
                batch.scores[i : i + 1],
                None if batch.targets is None else batch.targets[i : i + 1],
                batch.layer,
                batch.method,
                input_maps=None if batch.input_maps is None else batch.input_maps[i : i + 1],
            ),
        )


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_for_targets_equals_separate_calls(cls: type) -> None:
    net = net_for(cls)
    x = torch.rand(2, 3, 16, 16)
    cam = build(cls, net)
    targets: list[Any] = [np.int64(4), np.array([1, 2]), None, torch.tensor([3, 0])]
    together = cam.for_targets(x, targets)
    assert len(together) == len(targets)
    for res, t in zip(together, targets, strict=True):
        same(res, cam(x, target=t))
    if cls.uses_target:
        top = cam.for_targets(x, "top-2")
        order = net(x).topk(2, dim=1).indices
        assert [r.targets.tolist() for r in top] == order.T.tolist()
        same(top[1], cam(x, target=order[:, 1]))


def _keyword_options(cls: type) -> set[str]:
    """Every keyword-only constructor option of ``cls`` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                names.add(p.name)
    return names


# A value other than the default for every constructor option a method has. A method that adds an
# option must add it here: test_with_model_keeps_every_option fails otherwise.
NON_DEFAULT: dict[str, Any] = {
    "output": lambda out: out,
    "fuse": "max",
    "reshape": lambda act, x: to_spatial(act, x),  # what camlens infers, given by hand
    "fc": "fc",
    "batch_size": 3,
    "top_k": 5,
    "baseline": torch.full((3, 1, 1), 0.25),
    "subtract_baseline": False,
    "split": "hook",
    "num_samples": 2,
    "std": 0.1,
    "seed": 3,
    "kernel": "rbf",
    "gamma": 0.5,
    "k": 1.0,
    "head": ("fc",),
    "softmax": False,
    "method": "layercam",
    "alpha": 0.5,
    "comparisons": [2, 0],
    "weighting": "mean",
    "steps": 3,
    "optimize": False,
}
# Where two methods give one option name different meanings, their own non-default value.
NON_DEFAULT_FOR: dict[str, dict[str, Any]] = {"reciprocam": {"kernel": "point"}}


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_with_model_keeps_every_option(cls: type) -> None:
    wanted = _keyword_options(cls)
    if not cls.takes_layer:
        wanted.discard("reshape")  # an input-space method refuses a reshape
    missing = wanted - set(NON_DEFAULT)
    assert not missing, f"add a non-default value for {sorted(missing)} to NON_DEFAULT"
    net = net_for(cls)
    values = {**NON_DEFAULT, **NON_DEFAULT_FOR.get(cls.name, {})}
    cam = build(cls, net, **{k: values[k] for k in wanted})
    twin = copy.deepcopy(net)
    again = cam.with_model(twin)
    assert type(again) is cls and again.model is twin
    assert again.options.keys() == cam.options.keys() == wanted
    assert all(again.options[k] is cam.options[k] for k in wanted)
    assert again.layer_names == cam.layer_names
    x = torch.rand(2, 3, 16, 16)
    same(again(x, target=1), cam(x, target=1))


class FailingHead:
    """Raises in its head, after the explained layer's hooks have fired, when told to."""

    fail = False
    features: nn.Module
    pool: nn.Module
    fc: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.fail:
            raise RuntimeError("the head broke")
        return self.fc(self.pool(f).flatten(1))


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_hooks_removed_after_success_and_after_an_error_mid_forward(cls: type) -> None:
    net: Any = net_for(cls, FailingHead)
    x = torch.rand(2, 3, 16, 16)
    prev = torch.is_grad_enabled()
    build(cls, net)(x, target=1)
    assert hook_count(net) == 0
    net.fail = True
    with pytest.raises(camlens.ModelError, match="the head broke"):
        build(cls, net)(x, target=1)
    assert hook_count(net) == 0
    assert torch.is_grad_enabled() is prev
    assert all(p.grad is None for p in net.parameters())


class BreaksAfterFirstForward:
    """A model that works once, then fails: only a method's internal forwards meet the failure."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("out of memory on an internal pass")
        return super().forward(x)  # type: ignore[misc]


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_a_failing_internal_forward_is_a_model_error(cls: type) -> None:
    model: Any = net_for(cls, BreaksAfterFirstForward)
    cam = build(cls, model)
    x = torch.rand(1, 3, 16, 16)
    try:
        res = cam(x, target=0)
    except camlens.ModelError as e:
        assert "out of memory on an internal pass" in str(e)
        assert model.calls > 1  # it was an internal forward that failed
    else:
        assert model.calls == 1 and res.maps.shape == (1, 16, 16)
    if cls in (
        camlens.ScoreCAM,
        camlens.AblationCAM,
        camlens.GuidedGradCAM,
        camlens.SmoothGradCAMPlusPlus,
    ):
        assert model.calls > 1  # these methods need more than one forward
    assert hook_count(model) == 0


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_noncontiguous_and_channels_last_inputs(cls: type) -> None:
    net = net_for(cls)
    x = torch.rand(2, 3, 16, 16)
    cam = build(cls, net)
    ref = cam(x, target=[1, 2])
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not transposed.is_contiguous()
    same(cam(transposed, target=[1, 2]), ref)
    same(cam(x.contiguous(memory_format=torch.channels_last), target=[1, 2]), ref)


@pytest.mark.parametrize("cls", METHODS, ids=ids)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_one_two_and_three_spatial_axes(cls: type, dims: int) -> None:
    size = {1: 24, 2: 12, 3: 8}[dims]
    x = torch.rand(2, 3, *([size] * dims))
    if dims not in cls.spatial_dims:
        net = net_for(cls)
        with pytest.raises(ValueError, match=rf"{cls.__name__} is defined for .* inputs only"):
            build(cls, net)(x, target=[1, 2])
        assert hook_count(net) == 0
        return
    net = net_for(cls, dims=dims)
    res = build(cls, net)(x, target=[1, 2])
    assert res.maps.shape == (2, *([size] * dims)) and res.maps.dtype == torch.float32
    assert float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1
    at_input = cls.input_space or not cls.takes_layer  # the map lives at the input's resolution
    layer_size = size if at_input else size // 2
    assert res.raw.shape == (2, *([layer_size] * dims))
    if cls.input_space:
        assert res.input_maps is not None and res.input_maps.shape == x.shape
    else:
        assert res.input_maps is None
    torch.testing.assert_close(res.scores, net(x).detach()[[0, 1], [1, 2]])


class Yielding:
    """Sleeps between the explained layer and the head: another thread runs exactly then."""

    features: nn.Module
    pool: nn.Module
    fc: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        time.sleep(2e-4)  # releases the GIL mid-forward, while the caller's capture is open
        return self.fc(self.pool(f).flatten(1))


@pytest.mark.parametrize("shared", [True, False], ids=["one-object", "two-objects"])
@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_two_threads_on_one_model_get_the_sequential_results(cls: type, shared: bool) -> None:
    torch.manual_seed(3)
    net = net_for(cls, Yielding, width=8)
    xs = [torch.rand(2, 3, 16, 16) for _ in range(4)]
    targets = [[0, 1], [2, 3], None, [4, 0]]
    cams = [build(cls, net)] * 2 if shared else [build(cls, net), build(cls, net)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refs = [cams[0](x, target=t) for x, t in zip(xs, targets, strict=True)]
    errors: list[str] = []

    def work(k: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in range(50):
                i = (j + 2 * k) % 4
                try:
                    same(cams[k](xs[i], target=targets[i]), refs[i])
                except Exception as e:  # collected: an assertion in a thread would be lost
                    errors.append(f"thread {k} call {j}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} of 100 calls differ, first: {errors[0]}"
    assert hook_count(net) == 0


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_a_model_changed_between_calls_is_explained_as_it_is_now(cls: type) -> None:
    net: Any = net_for(cls)
    x = torch.rand(2, 3, 16, 16)
    cam = build(cls, net)
    before = cam(x, target=1)
    torch.manual_seed(7)
    net.fc = nn.Linear(8, 5)  # a new head
    replace_inner_module(net)  # a new module inside the layer
    now = cam(x, target=1)
    same(now, build(cls, net)(x, target=1))
    assert not torch.allclose(now.scores, before.scores)
    assert not torch.allclose(now.raw, before.raw)


def test_an_automatic_layer_is_chosen_for_each_input_shape() -> None:
    net = GapNet().eval()
    net.features.append(nn.Conv2d(8, 8, 3, stride=2, padding=1))  # 4x4 -> 2x2 at 8x8 inputs
    cam = camlens.GradCAM(net)
    small, large = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 32, 32)
    # at 4x4 the last conv's output is 1x1 (not a map), so the layer before it is chosen ...
    assert cam(small).layer == "features.3"
    # ... which must not stick to inputs where the whole feature stack keeps a spatial map
    assert cam(large).layer == "features"
    assert cam(small).layer == "features.3"


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_non_finite_inputs_are_refused_naming_the_samples(cls: type) -> None:
    net = net_for(cls)
    x = torch.rand(4, 3, 16, 16)
    x[1, 0, 2, 3] = float("nan")
    x[3, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite values in sample\(s\) \[1, 3\]"):
        build(cls, net)(x, target=0)
    assert hook_count(net) == 0


#: option -> (a numpy value every method taking it accepts, the same as a plain value, a bad value)
NUMERIC_OPTIONS = {
    "batch_size": (np.int64(3), 3, 0),
    "num_samples": (np.int64(2), 2, 0),
    "std": (np.float32(0.5), 0.5, -1.0),
    "seed": (np.int64(3), 3, 1.5),
    "top_k": (np.int64(4), 4, 0),
}


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_numeric_options_take_numpy_values_and_refuse_bad_ones_alike(cls: type) -> None:
    """Every method checks a shared option the same way: numpy numbers are numbers, and a bad
    value is one error that ``except ValueError`` and ``except TypeError`` both catch."""
    net = net_for(cls)
    params = inspect.signature(cls.__init__).parameters
    taken = [o for o in NUMERIC_OPTIONS if o in params]
    for option in taken:
        numpy_value, plain, bad = NUMERIC_OPTIONS[option]
        assert getattr(build(cls, net, **{option: numpy_value}), option) == plain
        with pytest.raises(ValueError, match=option) as info:
            build(cls, net, **{option: bad})
        assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_integer_pixels_get_one_clear_error(cls: type) -> None:
    """uint8 pixels (a decoded image not yet converted): the model's own failure, reported as a
    ModelError, or the method's TypeError where it needs gradients of the input; never a bare error."""
    net = net_for(cls)
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(
        (camlens.ModelError, TypeError), match=r"unsigned char|uint8|floating"
    ) as info:
        build(cls, net)(x, target=0)
    assert type(info.value) in (camlens.ModelError, TypeError)
    assert hook_count(net) == 0


@pytest.mark.parametrize("cls", [c for c in METHODS if c.model_kind != "any"], ids=lambda c: c.name)
def test_a_method_for_transformers_refuses_a_cnn(cls: type) -> None:
    net = GapNet().eval()
    with pytest.raises(ValueError, match="has no attention module"):
        cls(net)
    assert hook_count(net) == 0
