"""camlens.evaluate: the benchmark harness on a small model, and on the demo model once it exists."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import camlens
from camlens import evaluate
from camlens.demo import make_dataset


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    ).eval()


@pytest.fixture(scope="module")
def report() -> evaluate.EvaluationReport:
    data = make_dataset(16, seed=0, size=32)
    calls: list[tuple[str, int, int]] = []
    rep = evaluate.run(
        small_net(), data=data, batch_size=16, steps=3, progress=lambda *a: calls.append(a)
    )
    assert calls[-1] == ("baseline: centre gaussian", 16, 16)
    return rep


def test_a_row_per_method_and_two_baselines(report: evaluate.EvaluationReport) -> None:
    names = [r.name for r in report.rows]
    assert names == [*camlens.METHODS, *evaluate.BASELINES]
    table = evaluate.main_table(report)
    lines = table.splitlines()
    assert len(lines) == 2 + len(camlens.METHODS) + 2
    for name in names:
        assert any(line.startswith(f"| {name}") for line in lines)
    assert "Pointing game" in lines[0] and "Deletion AUC" in lines[0]


def test_values_in_range(report: evaluate.EvaluationReport) -> None:
    for r in report.rows:
        if r.kind == "method" and camlens.METHODS[r.name].model_kind != "any":
            # a transformer method on this CNN: its row reports why, and the run goes on
            assert r.error is not None and "no attention module" in r.error
            continue
        assert r.error is None, r.error
        for key in (
            "pointing_game",
            "energy_pointing_game",
            "box_accuracy",
            "deletion_auc",
            "insertion_auc",
        ):
            v = getattr(r, key)
            assert 0.0 <= v <= 1.0, (r.name, key, v)
        assert 0.0 <= r.average_drop <= 100.0
        if r.kind == "method":
            assert r.ms_per_image is not None and r.ms_per_image > 0
        else:
            assert r.ms_per_image is None
        assert set(report.per_sample[r.name]) >= {"pointing_game", "deletion_auc"}
        assert report.per_sample[r.name]["deletion_auc"].shape == (16,)


def test_serialisation(report: evaluate.EvaluationReport) -> None:
    md = report.to_markdown()
    assert evaluate.main_table(report) in md and "16 images" in md
    data = json.loads(report.to_json())
    assert [r["name"] for r in data["rows"]] == [r.name for r in report.rows]
    assert data["settings"]["n"] == 16 and data["settings"]["tolerance"] == pytest.approx(
        15 * 32 / 224
    )


def test_baseline_maps() -> None:
    u = evaluate.baseline_maps("uniform", 2, (6, 8))
    assert u.shape == (2, 6, 8) and (u == 1).all()
    g = evaluate.baseline_maps("centre gaussian", 1, (8, 8))
    assert g.max() == 1 and g[0, 3:5, 3:5].min() == 1 and g[0, 0, 0] < 0.2
    with pytest.raises(ValueError, match="baseline"):
        evaluate.baseline_maps("random", 1, (4, 4))


def test_method_selection_and_failures() -> None:
    data = make_dataset(4, seed=1, size=32)

    class NoGap(nn.Module):  # CAM cannot run on this head: its row reports the error
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 32 * 32, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    rep = evaluate.run(NoGap().eval(), methods=["cam", "grad-cam"], data=data, steps=2)
    assert [r.name for r in rep.rows] == ["cam", "gradcam", *evaluate.BASELINES]
    assert rep.row("cam").error is not None and math.isnan(rep.row("cam").pointing_game)
    assert rep.row("gradcam").error is None
    assert "(failed)" in evaluate.main_table(rep)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate.run(small_net(), methods=["nope"], data=data)
    with pytest.raises(ValueError, match="labels"):
        evaluate.run(small_net(), data=(data[0], data[1][:2], data[2]))


def _demo_model() -> nn.Module:
    from camlens.demo import WEIGHTS_PATH, load_model

    if not WEIGHTS_PATH.is_file():
        pytest.skip("the demo model's weights are not built yet")
    return load_model()


def test_gradcam_beats_the_baselines_on_the_demo_model() -> None:
    model = _demo_model()
    rep = evaluate.run(model, methods=["gradcam"], n=32, seed=123, batch_size=32, steps=2)
    pg = rep.row("gradcam").pointing_game
    for name in evaluate.BASELINES:
        assert pg >= rep.row(name).pointing_game + 0.2, (pg, rep.row(name))
