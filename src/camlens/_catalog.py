"""The methods by name, without importing torch: what ``camlens methods`` prints and the CLI checks.

``camlens methods`` and the command line's ``--method`` checks must answer in a fraction of a second,
before torch is imported, so the names, aliases and one-line descriptions of :data:`camlens.METHODS`
are repeated here as plain data. ``tests/test_startup.py`` checks that this table and the registry
agree (same names in the same order, same aliases, same first docstring lines), so they cannot drift:
a method added to the registry without a line here fails that test.

Example:
    >>> lookup("Grad-CAM").name
    'gradcam'
    >>> [m.name for m in CATALOG][:3]
    ['cam', 'gradcam', 'hirescam']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "MethodInfo", "lookup", "names"]


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


CATALOG: tuple[MethodInfo, ...] = (
    MethodInfo(
        "cam",
        (),
        "CAM (Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150): the classifier's own weights.",
    ),
    MethodInfo(
        "gradcam",
        ("grad-cam",),
        "Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391).",
    ),
    MethodInfo(
        "hirescam",
        ("hires-cam",),
        "HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891): element-wise gradient x activation.",
    ),
    MethodInfo(
        "gradcam++",
        ("gradcampp", "gradcamplusplus", "grad-cam++"),
        "Grad-CAM++ (Chattopadhay et al., WACV 2018, https://arxiv.org/abs/1710.11063).",
    ),
    MethodInfo(
        "xgradcam",
        ("xgrad-cam",),
        "XGrad-CAM (Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312).",
    ),
    MethodInfo(
        "layercam",
        ("layer-cam",),
        "LayerCAM (Jiang et al., IEEE TIP 2021): positive gradients weight activations element-wise.",
    ),
    MethodInfo(
        "eigencam",
        ("eigen-cam",),
        "Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299).",
    ),
    MethodInfo(
        "scorecam",
        ("score-cam",),
        "Score-CAM (Wang et al., CVPR-W 2020, https://arxiv.org/abs/1910.01279).",
    ),
    MethodInfo(
        "ablationcam",
        ("ablation-cam",),
        "Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/html/"
        "Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_"
        "Localization_WACV_2020_paper.html).",
    ),
    MethodInfo(
        "guided-backprop",
        ("guidedbackprop", "guided-bp"),
        "Guided backpropagation (Springenberg et al., ICLR-W 2015, https://arxiv.org/abs/1412.6806).",
    ),
    MethodInfo(
        "guided-gradcam",
        ("guidedgradcam", "guided-grad-cam"),
        "Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM map.",
    ),
)

_BY_NAME: dict[str, MethodInfo] = {
    key.lower(): info for info in CATALOG for key in (info.name, *info.aliases)
}


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
