"""TorchScript models whose layers can be hooked.

TorchScript runs its submodules in compiled code, where Python hooks never fire.
:func:`script_to_hookable` therefore wraps a TorchScript module so that each container's ``forward``
(its TorchScript code, which is Python syntax) runs in Python and calls its children through
``nn.Module.__call__``; layers can then be hooked like those of any module. A container whose code
Python cannot run stays compiled (its children are then not hookable), and the wrapper is checked
against the compiled model on a probe input.
"""

from __future__ import annotations

import math
import operator
import typing
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ScriptProxy", "script_to_hookable"]


class _Fallback(Exception):
    """A wrapped container whose TorchScript code failed to run as Python."""

    def __init__(self, proxy: ScriptProxy) -> None:
        super().__init__(proxy)
        self.proxy = proxy


class _TorchNamespace:
    """``torch`` as TorchScript code sees it: ``torch.__is__`` and friends are Python operators."""

    _EXTRA: typing.ClassVar[dict[str, Any]] = {
        "__is__": operator.is_,
        "__isnot__": operator.is_not,
        "__not__": operator.not_,
        "len": len,
    }

    def __getattr__(self, name: str) -> Any:
        if name in self._EXTRA:
            return self._EXTRA[name]
        for where in (torch, torch._C._nn, torch.nn.functional):
            if hasattr(where, name):
                return getattr(where, name)
        return getattr(torch.ops.aten, name)


class _TorchRoot:
    """``__torch__.torch.nn.functional.relu`` in TorchScript code -> ``torch.nn.functional.relu``."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        path = (*self._path, name)
        if path[0] != "torch":
            raise AttributeError(f"__torch__.{'.'.join(path)} cannot run as Python")
        obj: Any = torch
        for part in path[1:]:
            if not hasattr(obj, part):
                return _TorchRoot(path)
            obj = getattr(obj, part)
        return obj


def _script_globals() -> dict[str, Any]:
    return {
        "torch": _TorchNamespace(),
        "__torch__": _TorchRoot(),
        "ops": torch.ops,
        "Tensor": Tensor,
        "List": list,
        "Dict": dict,
        "Tuple": tuple,
        "Optional": typing.Optional,
        "NoneType": type(None),
        "Device": torch.device,
        "math": math,
        "annotate": lambda _t, v: v,
        "unchecked_cast": lambda _t, v: v,
        "uninitialized": lambda _t: None,
        "isinstance": isinstance,
        "getattr": getattr,
    }


class _Callee:
    """What ``self.child`` is inside re-run TorchScript code: ``.forward`` goes through hooks.

    A traced module called several times gets methods ``forward1``, ``forward2``, ...; they too run
    through ``__call__`` (so hooks fire), with the method to use set for that one call.
    """

    def __init__(self, module: ScriptProxy) -> None:
        self._module = module
        self.forward = module.__call__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        module = self._module
        if name.startswith("forward") and module.python and module._method(name) is not None:

            def call(*args: Any, **kwargs: Any) -> Any:
                object.__setattr__(module, "_active", name)
                try:
                    return module(*args, **kwargs)
                finally:
                    object.__setattr__(module, "_active", "forward")

            return call
        return getattr(module._script, name)


class _SelfView:
    """``self`` inside re-run TorchScript code: children through hooks, methods re-run, rest from the script module."""

    def __init__(self, proxy: ScriptProxy) -> None:
        self._proxy = proxy

    def __getattr__(self, name: str) -> Any:
        proxy = self._proxy
        if name in proxy._modules:
            child = proxy._modules[name]
            assert isinstance(child, ScriptProxy)
            return _Callee(child)
        if name == "training":
            return proxy.training
        fn = proxy._method(name)
        if fn is not None:
            return lambda *a, **k: fn(self, *a, **k)
        return getattr(proxy._script, name)


class ScriptProxy(nn.Module):
    """A TorchScript module whose containers run their code in Python, so that hooks on children fire.

    The children are ``ScriptProxy`` objects under the same names, so layer names are those of the
    scripted model. Leaves (modules without children) run compiled. Parameters and buffers are the
    script module's own tensors.

    Args:
        script: a ``torch.jit.ScriptModule`` (``RecursiveScriptModule``).
    """

    _script: nn.Module
    _methods: dict[str, Callable[..., Any] | None]
    _active: str

    def __init__(self, script: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)
        object.__setattr__(self, "_methods", {})
        object.__setattr__(self, "_active", "forward")
        self.python = False
        for name, child in script.named_children():
            self.add_module(name, ScriptProxy(child))
        for name, p in script.named_parameters(recurse=False):
            self._parameters[name] = p
        for name, b in script.named_buffers(recurse=False):
            self._buffers[name] = b
        self.training = script.training
        # Traced submodules cannot be called from Python at all, so their leaves re-run too.
        if self._modules or isinstance(script, torch.jit.TracedModule):
            self.python = self._method("forward") is not None

    def _method(self, name: str) -> Callable[..., Any] | None:
        cache: dict[str, Callable[..., Any] | None] = self._methods
        if name in cache:
            return cache[name]
        fn = None
        script = self._script
        try:
            has = script._c._has_method(name)  # type: ignore[union-attr,operator]
        except Exception:
            has = False
        if has:
            try:
                code, consts = script._c._get_method(name).code_with_constants  # type: ignore[union-attr,operator]
                scope = _script_globals()
                scope["CONSTANTS"] = (
                    SimpleNamespace(**consts) if isinstance(consts, dict) else consts
                )
                exec(compile(code, f"<torchscript {type(script).__name__}.{name}>", "exec"), scope)
                fn = scope.get(name)
            except Exception:
                fn = None
        cache[name] = fn
        return fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        fn = self._method(self._active) if self.python else None
        if fn is None:
            if self._active != "forward":
                return getattr(self._script, self._active)(*args, **kwargs)
            return self._script(*args, **kwargs)
        try:
            return fn(_SelfView(self), *args, **kwargs)
        except _Fallback:
            raise
        except Exception as exc:
            raise _Fallback(self) from exc

    @property
    def original_name(self) -> str:
        """The class name of the scripted module (``Conv2d``, ``Sequential``, ...)."""
        return str(getattr(self._script, "original_name", "ScriptModule"))

    def extra_repr(self) -> str:
        return f"{self.original_name}, python={self.python}"


def script_to_hookable(script: nn.Module, probe: Tensor) -> nn.Module:
    """Wrap a TorchScript module in :class:`ScriptProxy` objects, checked on ``probe``.

    Containers whose code cannot run as Python are left compiled. When the wrapped model's output on
    ``probe`` differs from the compiled one, the module is returned unwrapped (hooks then fail with a
    clear error from the method).

    Raises:
        ModelError: the compiled model itself fails on ``probe`` (a wrong input size).
    """
    from camlens.methods.base import model_error
    from camlens.targets import select_output

    proxy = ScriptProxy(script).eval()
    with torch.no_grad():
        try:
            expected = select_output(script(probe))
        except Exception as exc:
            raise model_error(probe, exc, hint="pass its input size with --size") from exc
        for _ in range(sum(1 for _ in proxy.modules()) + 1):
            try:
                got = select_output(proxy(probe))
            except _Fallback as fb:
                fb.proxy.python = False
                continue
            except Exception:
                return script
            if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                return proxy
            return script
    return script
