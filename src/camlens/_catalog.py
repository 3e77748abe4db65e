"""The methods by name, without importing torch: what ``camlens methods`` prints and the CLI checks.

``camlens methods`` and the command line's ``--method`` checks must answer in a fraction of a second,
before torch is imported. So the names, aliases and one-line descriptions of :data:`camlens.METHODS`
are read here from the methods' source with :mod:`ast` (the ``@register(name, aliases=...)``
decorators and the first docstring line of each class, in the registry's module order), not imported
and not copied: a method added in its own file is listed with nothing else to edit.
``tests/test_startup.py`` checks that this reading and the registry agree.

Example:
    >>> lookup("Grad-CAM").name
    'gradcam'
    >>> [m.name for m in CATALOG][:3]
    ['gradcam', 'hirescam', 'gradcam++']
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CATALOG", "MethodInfo", "lookup", "names", "plain"]


@dataclass(frozen=True)
class MethodInfo:
    """One method of :data:`camlens.METHODS`, as plain data.

    Attributes:
        name: the registry name (``"gradcam"``).
        aliases: other names accepted for it (matched case-insensitively).
        summary: the first line of the class's docstring.
    """

    name: str
    aliases: tuple[str, ...]
    summary: str


def _literal(node: ast.AST) -> Any:
    return ast.literal_eval(node)


def _scan() -> tuple[MethodInfo, ...]:
    """Read every ``@register(name, aliases=...)`` class of :mod:`camlens.methods` from its source."""
    pkg = Path(__file__).parent / "methods"
    order: tuple[str, ...] = ()
    for node in ast.parse((pkg / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODULE_ORDER" for t in node.targets
        ):
            order = tuple(_literal(node.value))
    others = sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__")
    seen: set[str] = set()
    found: list[MethodInfo] = []
    for module in (*order, *others):
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse((pkg / f"{module}.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Name)
                    and dec.func.id == "register"
                    and dec.args
                ):
                    name = str(_literal(dec.args[0]))
                    aliases: tuple[str, ...] = ()
                    for kw in dec.keywords:
                        if kw.arg == "aliases":
                            aliases = tuple(_literal(kw.value))
                    doc = (ast.get_docstring(node) or "").strip()
                    summary = doc.splitlines()[0].strip() if doc else ""
                    found.append(MethodInfo(name, aliases, summary))
    return tuple(found)


#: Every registered method, in the order of :data:`camlens.METHODS`.
CATALOG: tuple[MethodInfo, ...] = _scan()
_BY_NAME = {key.lower(): info for info in CATALOG for key in (info.name, *info.aliases)}


def plain(text: str) -> str:
    """A docstring line for display: reStructuredText's inline literals (````x````) as plain text.

    Example:
        >>> plain("pytorch-grad-cam's ``GradCAMElementWise``")
        "pytorch-grad-cam's GradCAMElementWise"
    """
    return text.replace("``", "")


def names() -> list[str]:
    """The registry names, in the order methods are listed to users."""
    return [info.name for info in CATALOG]


def lookup(name: str) -> MethodInfo:
    """The method for a name or alias (case-insensitive, surrounding spaces ignored).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        import difflib

        close = difflib.get_close_matches(name.strip().lower(), list(_BY_NAME), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; known methods: {', '.join(names())}")
    return info
