"""The audit's analysis on its own: each step, and the findings on tables whose answer is known.

No model runs here: the tables are built from maps drawn by hand (a Gaussian blob at a chosen cell)
with the statistics :mod:`camlens.audit.stats` computes, so every case states where the maps peak and
where the content is, and the findings must follow from that.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from camlens.audit import analysis as A
from camlens.audit.batch import STAT_COLUMNS, schema
from camlens.audit.stats import content_peak, map_statistics, object_statistics

G = 12  # map side


def blob(y: float, x: float, side: int = G, width: float = 0.8) -> np.ndarray:
    """A Gaussian bump centred on the cell nearest to ``(y, x)`` (fractions of the side)."""
    i, j = min(side - 1, int(y * side)), min(side - 1, int(x * side))
    yy, xx = np.mgrid[0:side, 0:side]
    return np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * width**2)).astype(np.float32)


def make_table(rows: list[dict]) -> pa.Table:
    """Rows ``{path, label, map, content, hit?, method?, error?}`` -> a results table."""
    cols: dict[str, list] = {k: [] for k in schema().names}
    for r in rows:
        m = r.get("map")
        err = r.get("error", "")
        cols["path"].append(r["path"])
        cols["label"].append(r["label"])
        cols["pred"].append(r.get("pred", r["label"]) if not err else -1)
        cols["target"].append(r["label"])
        cols["score"].append(1.0)
        cols["method"].append(r.get("method", "gradcam"))
        cols["layer"].append("layer")
        cols["error"].append(err)
        if m is None:
            cols["map"].append([])
            cols["map_shape"].append([0, 0])
            for c in STAT_COLUMNS:
                cols[c].append(float("nan"))
            continue
        cols["map"].append(m.reshape(-1).tolist())
        cols["map_shape"].append(list(m.shape))
        st = {
            k: float(v[0]) for k, v in map_statistics(torch.from_numpy(m)[None], (96, 96)).items()
        }
        hit = r.get("hit", float("nan"))
        obj = r.get("object", (float("nan"), float("nan")))
        st.update(
            content_y=r["content"][0],
            content_x=r["content"][1],
            hit=hit,
            energy_in=r.get("energy_in", float("nan")),
            object_area=r.get("area", float("nan")),
            object_y=obj[0],
            object_x=obj[1],
        )
        for c in STAT_COLUMNS:
            cols[c].append(st[c])
    return pa.Table.from_pydict(cols, schema=schema())


def honest(
    rng: np.random.Generator, label: int, n: int, masks: bool = False, tag: str = ""
) -> list[dict]:
    """Maps that peak on their object, which sits anywhere."""
    out = []
    for i in range(n):
        y, x = rng.uniform(0.2, 0.8, 2)
        row = {
            "path": f"{tag}h{label}_{i}.png",
            "label": label,
            "map": blob(y, x),
            "content": (y, x),
        }
        if masks:
            row.update(hit=1.0, energy_in=0.6, area=0.1, object=(y, x))
        out.append(row)
    return out


def cue(
    rng: np.random.Generator, label: int, n: int, masks: bool = False, tag: str = ""
) -> list[dict]:
    """Maps that peak in the top-left corner while the object sits anywhere."""
    out = []
    for i in range(n):
        y, x = rng.uniform(0.3, 0.8, 2)
        row = {
            "path": f"{tag}c{label}_{i}.png",
            "label": label,
            "map": blob(0.1, 0.1),
            "content": (y, x),
        }
        if masks:
            row.update(hit=0.0, energy_in=0.01, area=0.1, object=(y, x))
        out.append(row)
    return out


def kinds(summary: dict) -> list[tuple[str, str]]:
    return sorted((f["class"], f["kind"]) for f in summary["findings"])


# --------------------------------------------------------------------------- the steps


def test_downsample_averages_areas_and_normalises() -> None:
    m = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    v = A.downsample(m, grid=2)
    raw = np.array([[2.5, 4.5, 10.5, 12.5]])  # the means of the four 2x2 quarters
    np.testing.assert_allclose(v, raw / np.linalg.norm(raw))
    assert A.downsample(np.zeros((2, 5, 5))).tolist() == np.zeros((2, 25)).tolist()  # grid 5 < 8
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        A.downsample(np.zeros((4, 4)))


def two_blobs(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 0.05, (n, 3))
    b = rng.normal(1.0, 0.05, (n, 3))
    return np.concatenate([a, b]), np.array([0] * n + [1] * n)


def test_affinity_is_a_symmetric_knn_graph_without_edges_across_far_groups() -> None:
    x, truth = two_blobs()
    a = A.affinity(x, k=5)
    np.testing.assert_array_equal(a, a.T)
    assert np.all(np.diag(a) == 0) and np.all(a >= 0) and np.all(a <= 1)
    assert np.all((a > 0).sum(1) >= 5)
    assert a[truth[:, None] != truth[None, :]].max() == 0.0  # no edge between the blobs
    assert A.affinity(x[:1]).shape == (1, 1)


def test_spectral_embedding_counts_the_groups_by_the_eigengap() -> None:
    x, _ = two_blobs()
    emb, lam, k = A.spectral_embedding(A.affinity(x))
    assert k == 2
    assert lam[0] == pytest.approx(0.0, abs=1e-9) and lam[1] == pytest.approx(0.0, abs=1e-9)
    assert lam[2] > 0.1
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)
    rng = np.random.default_rng(1)
    three = np.concatenate([rng.normal(c, 0.05, (15, 2)) for c in (0.0, 1.0, 2.0)])
    assert A.spectral_embedding(A.affinity(three))[2] == 3


def test_kmeans_recovers_the_groups_deterministically_largest_first() -> None:
    x, truth = two_blobs()
    x = np.concatenate([x, np.random.default_rng(3).normal(1.0, 0.05, (5, 3))])
    truth = np.concatenate([truth, [1] * 5])
    labels = A.kmeans(x, 2)
    assert labels.tolist() == (1 - truth).tolist()  # the group of 25 is numbered 0
    assert A.kmeans(x, 2).tolist() == labels.tolist()
    assert A.kmeans(x, 1).tolist() == [0] * len(x)


def test_hotspot_and_following() -> None:
    pts = np.array([[0.1, 0.1], [0.15, 0.1], [0.1, 0.2], [0.9, 0.9], [np.nan, np.nan]])
    centre, members = A.hotspot(pts, 0.12)
    assert centre.tolist() == [0.1, 0.1]
    assert members.tolist() == [True, True, True, False, False]
    follow = A.follows_content(
        np.array([[0.1, 0.1], [0.1, 0.1], [0.5, 0.5]]),
        np.array([[0.8, 0.8], [0.8, 0.8], [0.6, 0.55]]),
        np.array([np.nan, 1.0, np.nan]),
    )
    assert follow.tolist() == [False, True, True]  # the mask's verdict wins over the distance


def test_map_statistics_by_hand() -> None:
    m = torch.zeros(2, 4, 4)
    m[0, 1, 2] = 3.0
    m[0, 3, 0] = 1.0  # centroid: 0.75 * (0.375, 0.625) + 0.25 * (0.875, 0.125)
    s = map_statistics(m, (40, 40))
    assert s["peak_y"][0] == pytest.approx(0.375) and s["peak_x"][0] == pytest.approx(0.625)
    assert s["centroid_y"][0] == pytest.approx(0.5) and s["centroid_x"][0] == pytest.approx(0.5)
    p = np.array([0.75, 0.25])
    assert s["entropy"][0] == pytest.approx(-(p * np.log(p)).sum() / np.log(16), rel=1e-5)
    assert all(torch.isnan(v[1]) for v in s.values())  # an all-zero map has no statistics
    uniform = map_statistics(torch.ones(1, 5, 5), (50, 50))
    assert uniform["entropy"][0] == pytest.approx(1.0)
    assert uniform["border"][0] == pytest.approx(1 - 0.8**2, abs=1e-6)  # 10% band of a flat map


def test_object_statistics_by_hand() -> None:
    raw = torch.zeros(2, 4, 4)
    raw[:, 0, 0] = 1.0
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True  # under the peak
    masks[1, 6:, 6:] = True  # far away
    s = object_statistics(raw, masks, torch.tensor([True, True]), tolerance=1.0)
    assert s["hit"].tolist() == [1.0, 0.0]
    assert s["object_area"].tolist() == [pytest.approx(4 / 64)] * 2
    assert s["object_y"][0] == pytest.approx(0.125) and s["object_x"][1] == pytest.approx(0.875)
    assert 0.5 < float(s["energy_in"][0]) <= 1.0 and float(s["energy_in"][1]) == 0.0
    none = object_statistics(raw, masks, torch.tensor([False, False]), 1.0)
    assert all(bool(torch.isnan(v).all()) for v in none.values())


def test_content_peak_finds_a_contrasting_object_on_a_textured_background() -> None:
    g = torch.Generator().manual_seed(0)
    views = 0.4 + 0.1 * torch.rand(4, 3, 64, 64, generator=g)
    where = [(10, 40), (50, 12), (30, 30), (48, 50)]
    for i, (y, x) in enumerate(where):
        views[i, :, y - 5 : y + 5, x - 5 : x + 5] = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
    got = content_peak(views)
    want = torch.tensor([[(y + 0.0) / 64, (x + 0.0) / 64] for y, x in where])
    assert torch.allclose(got, want, atol=0.05)


# --------------------------------------------------------------------------- findings


def test_a_fixed_position_cue_is_found_in_that_class_only() -> None:
    rng = np.random.default_rng(0)
    rows = cue(rng, 0, 30) + honest(rng, 1, 30) + honest(rng, 2, 30)
    s = A.analyze(make_table(rows), ["marked", "b", "c"])
    assert kinds(s) == [("marked", "fixed_position")]
    f = s["findings"][0]
    assert f["share"] == 1.0 and f["evidence"]["peak_share"] == 1.0
    assert f["evidence"]["content_share"] <= 0.2
    assert f["evidence"]["hotspot"] == [pytest.approx(1.5 / G), pytest.approx(1.5 / G)]
    assert len(f["examples"]) == A.EXAMPLES and all(p.startswith("c0_") for p in f["examples"])
    assert s["images"] == 90 and s["rows"] == 90 and s["errors"] == 0
    marked = s["per_class"][0]
    assert marked["count"] == 30 and marked["accuracy"] == 1.0
    mean = np.array(marked["methods"]["gradcam"]["mean_map"])
    assert np.unravel_index(mean.argmax(), mean.shape) == (1, 1)


def test_objects_that_sit_in_one_place_are_not_a_cue() -> None:
    """Negative control: a class whose objects are always centred (maps follow them) is no finding,
    judged by the content's position and by masks."""
    rng = np.random.default_rng(1)
    for masks in (False, True):
        centred = []
        for i in range(30):
            y, x = 0.5 + rng.normal(0, 0.03, 2)
            row = {"path": f"m{i}.png", "label": 0, "map": blob(y, x), "content": (y, x)}
            if masks:
                row.update(hit=1.0, energy_in=0.5, area=0.1, object=(y, x))
            centred.append(row)
        s = A.analyze(make_table(centred + honest(rng, 1, 30, masks)))
        assert s["findings"] == []
        hot = s["per_class"][0]["methods"]["gradcam"]["hotspot"]
        assert hot["peak_share"] >= 0.9 and hot["cue_share"] <= 0.1  # gathered, but on the objects


def test_an_honest_data_set_has_no_finding() -> None:
    rng = np.random.default_rng(2)
    for masks in (False, True):
        rows = [r for c in range(4) for r in honest(rng, c, 40, masks)]
        assert A.analyze(make_table(rows))["findings"] == []


def test_masks_make_off_object_findings() -> None:
    rng = np.random.default_rng(3)
    beside = []
    for i in range(30):
        y, x = rng.uniform(0.2, 0.6, 2)
        beside.append(
            {
                "path": f"b{i}.png",
                "label": 0,
                "map": blob(y, x + 0.3),
                "content": (y, x),
                "hit": 0.0,
                "energy_in": 0.02,
                "area": 0.05,
                "object": (y, x),
            }
        )
    s = A.analyze(make_table(beside + honest(rng, 1, 30, masks=True)), ["beside", "fine"])
    assert kinds(s) == [("beside", "off_object")]  # the maps move with the objects: no cue
    ev = s["findings"][0]["evidence"]
    assert s["findings"][0]["share"] == 1.0 and ev["hit_rate"] == 0.0
    assert ev["miss_distance"] == pytest.approx(0.3, abs=0.06)


def test_a_subgroup_with_a_cue_is_a_split_and_a_majority_is_a_fixed_position_cue() -> None:
    rng = np.random.default_rng(4)
    rows = cue(rng, 0, 12) + honest(rng, 0, 28) + honest(rng, 1, 40)
    s = A.analyze(make_table(rows))
    assert kinds(s) == [("class 0", "split")]
    f = s["findings"][0]
    assert f["share"] == pytest.approx(12 / 40)
    (g,) = f["evidence"]["groups"]
    assert g["strategy"] == "fixed_position" and g["size"] == 12 and g["rest"] == 0.0
    assert all(p.startswith("c0_") for p in f["examples"])
    rows = cue(rng, 0, 24) + honest(rng, 0, 16) + honest(rng, 1, 40)
    assert kinds(A.analyze(make_table(rows))) == [("class 0", "fixed_position")]


def test_the_summary_does_not_depend_on_row_order_or_chunking() -> None:
    rng = np.random.default_rng(5)
    rows = cue(rng, 0, 20) + honest(rng, 1, 25) + honest(rng, 2, 25)
    a = A.analyze(make_table(rows))
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    t = make_table(shuffled)
    b = A.analyze([t.slice(0, 17), t.slice(17)])
    assert a == b


def test_the_sample_is_capped_but_counts_use_every_row() -> None:
    rng = np.random.default_rng(6)
    rows = [
        *honest(rng, 0, 60),
        {"path": "bad.png", "label": 0, "map": None, "content": (0, 0), "error": "not an image"},
    ]
    s = A.analyze(make_table(rows), max_per_class=20)
    info = s["per_class"][0]["methods"]["gradcam"]
    assert s["per_class"][0]["count"] == 60 and info["sampled"] == 20
    assert sum(info["histograms"]["entropy"]) == 60
    assert s["errors"] == 1 and s["images"] == 61 and s["per_class"][0]["errors"] == 1
    with pytest.raises(ValueError, match="max_per_class"):
        A.analyze(make_table(rows), max_per_class=5)
    with pytest.raises(ValueError, match="lacks the audit columns"):
        A.analyze(pa.table({"path": ["a"]}))


def test_too_few_images_make_no_finding() -> None:
    rng = np.random.default_rng(7)
    s = A.analyze(make_table(cue(rng, 0, A.MIN_IMAGES - 1) + honest(rng, 1, 20)))
    assert s["findings"] == []
