"""camlens.metrics: known answers on hand-built cases, batched == per-sample, clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens import metrics
from camlens.metrics import MetricResult
from conftest import GapNet, hook_count

# ---- helpers -------------------------------------------------------------------------------------


def disk(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


class PixelNet(nn.Module):
    """Two classes; class 0's logit is 10 * (sum of the 4 informative pixels over channels - 2).

    On an image that is 1 on those pixels (one channel) and 0 elsewhere, class 0 is near-certain; take
    the pixels away and class 1 is.
    """

    def __init__(
        self, size: int = 8, pixels: tuple[tuple[int, int], ...] = ((1, 2), (2, 5), (5, 1), (6, 6))
    ) -> None:
        super().__init__()
        mask = torch.zeros(size, size)
        for y, x in pixels:
            mask[y, x] = 1.0
        self.register_buffer("mask", mask)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.mask).sum(dim=(1, 2, 3))
        return torch.stack([self.scale * (s - 2), torch.zeros_like(s)], 1)


def pixel_case(b: int = 3) -> tuple[PixelNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    net = PixelNet().eval()
    x = torch.zeros(b, 2, 8, 8)
    x[:, 0] = net.mask
    good = net.mask.expand(b, 8, 8) + 0.01 * torch.rand(b, 8, 8)  # informative pixels first
    bad = 1 - good  # informative pixels last
    return net, x, good, bad


def assert_close_results(a: MetricResult, parts: list[MetricResult]) -> None:
    cat = torch.cat([p.per_sample for p in parts])
    torch.testing.assert_close(a.per_sample, cat, rtol=1e-5, atol=1e-6, equal_nan=True)


# ---- localisation ------------------------------------------------------------------------------


def test_map_equal_to_mask_scores_one() -> None:
    masks = torch.stack([disk(20, 24, 6, 7, 3), disk(20, 24, 12, 15, 5), disk(20, 24, 3, 20, 2)])
    maps = masks.float()
    pg = metrics.pointing_game(maps, masks)
    epg = metrics.energy_pointing_game(maps, masks)
    assert pg.per_sample.tolist() == [1.0, 1.0, 1.0] and pg.summary == 1.0
    torch.testing.assert_close(epg.per_sample, torch.ones(3))
    assert epg.summary == pytest.approx(1.0)
    assert pg.name == "pointing_game" and pg.higher_is_better and pg.mean() == 1.0


def test_pointing_game_tolerance_is_euclidean() -> None:
    masks = torch.zeros(1, 30, 30, dtype=torch.bool)
    masks[0, 20, 20] = True
    maps = torch.zeros(1, 30, 30)
    maps[0, 20 - 3, 20 - 4] = 1.0  # distance 5 from the object
    assert metrics.pointing_game(maps, masks, tolerance=4.9).summary == 0.0
    assert metrics.pointing_game(maps, masks, tolerance=5).summary == 1.0
    assert metrics.pointing_game(maps, masks, tolerance=0).summary == 0.0
    maps2 = torch.zeros(1, 30, 30)
    maps2[0, 20, 20] = 1.0
    assert metrics.pointing_game(maps2, masks, tolerance=0).summary == 1.0


def test_pointing_game_ties_and_empty_masks() -> None:
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, :, :5] = True  # left half
    # constant map: every pixel is a maximum; the hit is the share of pixels within tolerance
    res = metrics.pointing_game(torch.ones(2, 10, 10), masks, tolerance=0)
    assert res.per_sample[0].item() == pytest.approx(0.5)
    assert torch.isnan(res.per_sample[1])  # empty mask: no answer
    assert res.summary == pytest.approx(0.5) and res.details["valid"].tolist() == [True, False]
    # two tied maxima, one on the object
    maps = torch.zeros(2, 10, 10)
    maps[:, 0, 0] = maps[:, 0, 9] = 1.0
    assert metrics.pointing_game(maps, masks, tolerance=0).per_sample[0].item() == pytest.approx(
        0.5
    )


def test_pointing_game_1d_and_3d() -> None:
    m1 = torch.zeros(2, 20, dtype=torch.bool)
    m1[:, 10:12] = True
    maps1 = torch.zeros(2, 20)
    maps1[0, 11] = 1.0
    maps1[1, 2] = 1.0
    assert metrics.pointing_game(maps1, m1, tolerance=3).per_sample.tolist() == [1.0, 0.0]
    m3 = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    m3[0, 4, 4, 4] = True
    maps3 = torch.zeros(1, 8, 8, 8)
    maps3[0, 5, 5, 5] = 1.0  # distance sqrt(3)
    assert metrics.pointing_game(maps3, m3, tolerance=1.7).summary == 0.0
    assert metrics.pointing_game(maps3, m3, tolerance=1.8).summary == 1.0


def test_energy_pointing_game_values() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2] = True
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 3 / 4 inside
    res = metrics.energy_pointing_game(maps, masks)
    assert res.per_sample[0].item() == pytest.approx(0.75)
    assert res.per_sample[1].item() == 0.0  # all-zero map: no energy, scores 0
    with pytest.raises(ValueError, match="non-negative"):
        metrics.energy_pointing_game(-maps - 1, masks)


def test_boxes_from_masks_and_back() -> None:
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    m[0, 7, 1] = True
    boxes = metrics.boxes_from_masks(m)
    assert boxes.tolist() == [[1, 2, 9, 8], [0, 0, 0, 0]]
    rect = torch.zeros(1, 10, 12, dtype=torch.bool)
    rect[0, 2:5, 3:9] = True
    assert torch.equal(metrics.boxes_to_masks(metrics.boxes_from_masks(rect), (10, 12)), rect)
    assert metrics.box_iou(
        torch.tensor([[0, 0, 4, 4]]), torch.tensor([[2, 0, 6, 4]])
    ).item() == pytest.approx(1 / 3)


def test_box_protocol_returns_the_blob_box() -> None:
    h, w = 40, 50
    blob = disk(h, w, 20, 30, 8)  # the largest segment
    maps = torch.zeros(2, h, w)
    maps[0] = blob.float() * (0.5 + 0.5 * torch.rand(h, w))
    maps[0, 2:5, 2:5] = 0.9  # a smaller separate segment above the threshold
    maps[0, 30:35, 2:6] = 0.1  # below 15% of the max: dropped
    maps[1] = maps[0].flip(-1)
    gt = torch.stack([blob, blob.flip(-1)])
    res = metrics.box_localization(maps, gt)
    expected = metrics.boxes_from_masks(gt)
    assert res.details["boxes"].tolist() == expected.tolist()
    x0_y0_x1_y1 = [22, 12, 39, 29]  # x0, y0 inclusive; x1, y1 exclusive
    assert res.details["boxes"][0].tolist() == x0_y0_x1_y1
    torch.testing.assert_close(res.details["iou"], torch.ones(2))
    assert res.per_sample.tolist() == [1.0, 1.0] and res.summary == 1.0
    # ground truth as boxes gives the same answer
    res2 = metrics.box_localization(maps, expected)
    assert res2.per_sample.tolist() == [1.0, 1.0]
    # a box far away is wrong
    far = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]])
    assert metrics.box_localization(maps, far).per_sample.tolist() == [0.0, 0.0]


def test_box_protocol_threshold_and_empty_map() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, 2:8, 2:8] = 0.2
    maps[0, 4:6, 4:6] = 1.0
    gt = torch.tensor([[4, 4, 6, 6], [0, 0, 3, 3]])
    tight = metrics.box_localization(maps, gt, threshold=0.5).details["boxes"]
    wide = metrics.box_localization(maps, gt, threshold=0.15).details["boxes"]
    assert tight[0].tolist() == [4, 4, 6, 6] and wide[0].tolist() == [2, 2, 8, 8]
    res = metrics.box_localization(maps, gt)
    assert res.details["boxes"][1].tolist() == [0, 0, 0, 0] and res.per_sample[1].item() == 0.0


def test_connected_components_match_scipy_8_connectivity() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(1)
    m = torch.rand(6, 30, 37, generator=g) > 0.55
    lab = metrics.connected_components(m)
    for i in range(m.shape[0]):
        ref, n = ndimage.label(m[i].numpy(), structure=np.ones((3, 3)))
        ours = lab[i].numpy()
        assert ((ours > 0) == (ref > 0)).all()
        pairs = set(zip(ref[ref > 0].tolist(), ours[ours > 0].tolist(), strict=True))
        assert len(pairs) == n == len(np.unique(ours[ours > 0]))  # the same partition


def test_localisation_batched_equals_per_sample() -> None:
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(5, 24, 24, generator=g) ** 4
    masks = torch.stack([disk(24, 24, 4 + 3 * i, 20 - 3 * i, 3 + i) for i in range(5)])
    for fn in (
        lambda a, b: metrics.pointing_game(a, b, tolerance=3),
        metrics.energy_pointing_game,
        lambda a, b: metrics.box_localization(a, b, threshold=0.3),
    ):
        assert_close_results(
            fn(maps, masks), [fn(maps[i : i + 1], masks[i : i + 1]) for i in range(5)]
        )


def test_localisation_errors() -> None:
    maps = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
        metrics.pointing_game(maps, torch.zeros(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(3, 8, 8\)"):
        metrics.energy_pointing_game(maps, torch.zeros(3, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 7, 8\)"):
        metrics.box_localization(maps, torch.zeros(2, 7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(3, 4\)"):
        metrics.box_localization(maps, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(maps, maps > 0.5, tolerance=-1)
    for bad in (0, 0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="threshold"):
            metrics.box_localization(maps, maps > 0.5, threshold=bad)


# ---- deletion / insertion ------------------------------------------------------------------------


def test_deletion_drops_at_first_step_for_a_map_that_finds_the_pixels() -> None:
    net, x, good, bad = pixel_case()
    res = metrics.deletion(net, x, good, target=0, steps=8)
    curve = res.details["curve"]
    assert curve.shape == (3, 9)
    assert (curve[:, 0] > 0.99).all()  # the intact image
    assert (curve[:, 1] < 0.01).all()  # 8 pixels removed, the 4 informative ones among them
    worse = metrics.deletion(net, x, bad, target=0, steps=8)
    assert (worse.details["curve"][:, :7] > 0.99).all()
    assert res.summary < 0.1 < 0.8 < worse.summary
    assert res.higher_is_better is False
    torch.testing.assert_close(res.details["fractions"], torch.arange(9) / 8)


def test_deletion_auc_is_the_trapezoid_of_the_curve() -> None:
    net, x, good, _ = pixel_case(2)
    res = metrics.deletion(net, x, good + 0.3, target=None, steps=5, score="logit")
    curve = res.details["curve"]
    f = res.details["fractions"]
    expected = ((curve[:, 1:] + curve[:, :-1]) / 2 * (f[1:] - f[:-1])).sum(1)
    torch.testing.assert_close(res.per_sample, expected)
    assert res.details["classes"].tolist() == [0, 0]  # target None: the top class on x


def test_insertion_rises_at_first_step() -> None:
    net, x, good, bad = pixel_case()
    res = metrics.insertion(net, x, good, target=0, steps=8, baseline="zeros")
    curve = res.details["curve"]
    assert (curve[:, 0] < 0.01).all() and (curve[:, 1] > 0.99).all()
    worse = metrics.insertion(net, x, bad, target=0, steps=8, baseline="zeros")
    assert res.summary > 0.85 > 0.2 > worse.summary
    assert res.higher_is_better is True


def test_baselines() -> None:
    x = torch.rand(2, 3, 9, 9)
    torch.testing.assert_close(
        metrics.gaussian_blur(torch.full((1, 2, 6, 6), 0.3)), torch.full((1, 2, 6, 6), 0.3)
    )
    blurred = metrics.gaussian_blur(x, sigma=2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    net = GapNet(classes=3).eval()
    maps = torch.rand(2, 9, 9)
    # with a single step the curve is [score(x), score(baseline)]: check each baseline is what it says
    for baseline, expected in (
        ("zeros", torch.zeros_like(x)),
        ("mean", x.mean(dim=(2, 3), keepdim=True).expand_as(x)),
        ("blur", metrics.gaussian_blur(x)),
        (
            torch.tensor([0.1, 0.2, 0.3]),
            torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1).expand_as(x),
        ),
    ):
        res = metrics.deletion(net, x, maps, target=1, steps=1, baseline=baseline)
        want = net(expected).softmax(1)[:, 1]
        torch.testing.assert_close(res.details["curve"][:, 1], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="baseline"):
        metrics.deletion(net, x, maps, steps=2, baseline="noise")
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 3, 9, 9\)"):
        metrics.deletion(net, x, maps, steps=2, baseline=torch.zeros(4))


def test_faithfulness_batched_equals_per_sample() -> None:
    net = GapNet(classes=4).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 12, 12, generator=g)
    maps = torch.rand(4, 12, 12, generator=g)
    target = [0, 3, 1, 2]
    for fn in (
        lambda xx, mm, t: metrics.deletion(net, xx, mm, t, steps=6, baseline="blur", batch_size=5),
        lambda xx, mm, t: metrics.insertion(net, xx, mm, t, steps=6, baseline="mean", batch_size=3),
        lambda xx, mm, t: metrics.average_drop(net, xx, mm, t),
        lambda xx, mm, t: metrics.road(net, xx, mm, t, percentiles=(0.2, 0.5, 0.8), noise_std=0.0),
        lambda xx, mm, t: metrics.road(
            net, xx, mm, t, percentiles=(0.3, 0.6), order="lerf", noise_std=0.0
        ),
    ):
        full = fn(x, maps, target)
        parts = [fn(x[i : i + 1], maps[i : i + 1], target[i : i + 1]) for i in range(4)]
        torch.testing.assert_close(
            full.per_sample, torch.cat([p.per_sample for p in parts]), rtol=1e-4, atol=1e-5
        )


def test_maps_are_upsampled_to_the_input() -> None:
    net = GapNet(classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    small = torch.rand(2, 4, 4)
    big = camlens.maps.upsample(small, (16, 16))
    a = metrics.deletion(net, x, small, 0, steps=4)
    b = metrics.deletion(net, x, big, 0, steps=4)
    torch.testing.assert_close(a.per_sample, b.per_sample)


def test_faithfulness_errors() -> None:
    net = GapNet(classes=3).eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(2, 3, 8, 8\)"):
        metrics.deletion(net, x, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(2, 8\).*\(2, 3, 8, 8\)"):
        metrics.insertion(net, x, torch.rand(2, 8))
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 1\).*\(2, 3, 8, 8\)"):
        metrics.average_drop(net, x, torch.rand(2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(2, 3, 8, 8\)"):
        metrics.road(net, x, torch.rand(1, 8, 8))
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            metrics.deletion(net, x, torch.rand(2, 8, 8), steps=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score"):
        metrics.deletion(net, x, torch.rand(2, 8, 8), score="auc")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.average_drop(net, x, torch.rand(2, 8, 8) * 3)
    with pytest.raises(ValueError, match="percentiles"):
        metrics.road(net, x, torch.rand(2, 8, 8), percentiles=(0.5, 1.0))
    with pytest.raises(ValueError, match="order"):
        metrics.road(net, x, torch.rand(2, 8, 8), order="random")


# ---- average drop / increase -------------------------------------------------------------------


class LinearNet(nn.Module):
    """logits = [sum(x), 0]: class 0's probability is sigmoid(sum(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_average_drop_and_increase_known_values() -> None:
    net = LinearNet()
    x = torch.zeros(3, 1, 2, 2)
    x[0] = 1.0  # Y = sigmoid(4)
    x[1] = -1.0  # Y = sigmoid(-4): masking it away raises class 0's confidence
    x[2] = 0.5
    maps = torch.stack([torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2)])
    y = torch.sigmoid(torch.tensor([4.0, -4.0, 2.0]))
    o = torch.sigmoid(torch.tensor([0.0, 0.0, 2.0]))
    drop = metrics.average_drop(net, x, maps, target=0)
    want = (y - o).clamp(min=0) / y * 100
    torch.testing.assert_close(drop.per_sample, want)
    assert (
        drop.summary == pytest.approx(want.mean().item(), rel=1e-5)
        and drop.higher_is_better is False
    )
    inc = metrics.average_increase(net, x, maps, target=0)
    torch.testing.assert_close(inc.per_sample, (o - y).clamp(min=0) / y * 100)
    ic = metrics.increase_in_confidence(net, x, maps, target=0)
    assert ic.per_sample.tolist() == [0.0, 100.0, 0.0]  # the unchanged sample is not an increase
    assert ic.summary == pytest.approx(100 / 3)
    assert drop.details["increase_in_confidence"] == pytest.approx(100 / 3)
    torch.testing.assert_close(drop.details["Y"], y)
    torch.testing.assert_close(drop.details["O"], o)


# ---- ROAD ----------------------------------------------------------------------------------------


def test_noisy_linear_imputation_solves_the_system() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 2, 40, 36, generator=g)
    removed = torch.zeros(3, 40, 36, dtype=torch.bool)
    removed[0, 5:35, 4:30] = True  # one big hole
    removed[1] = torch.rand(40, 36, generator=g) < 0.9  # scattered, 90%
    removed[2, :, :18] = True  # touching the border
    clean, info = metrics.noisy_linear_imputation(x, removed, noise_std=0.0)
    residual = metrics.linear_imputation_residual(clean, removed)
    assert residual.max().item() < 1e-4 and info["residual"] < 1e-4
    assert info["iterations"] < 4 * (40 + 36)
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(clean[keep], x[keep])  # kept pixels are untouched
    # a weighted mean of neighbours stays within the kept values' range (maximum principle)
    assert clean.min() >= x.min() - 1e-5 and clean.max() <= x.max() + 1e-5
    noisy, _ = metrics.noisy_linear_imputation(
        x, removed, noise_std=0.01, generator=torch.Generator().manual_seed(0)
    )
    diff = (noisy - clean)[~keep]
    assert torch.equal(noisy[keep], x[keep])
    assert diff.std().item() == pytest.approx(0.01, rel=0.1)


def test_noisy_linear_imputation_matches_a_sparse_solve() -> None:
    sparse = pytest.importorskip("scipy.sparse")
    spsolve = pytest.importorskip("scipy.sparse.linalg").spsolve
    g = torch.Generator().manual_seed(5)
    h, w = 9, 11
    img = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    removed = torch.rand(1, h, w, generator=g) < 0.6
    ours, _ = metrics.noisy_linear_imputation(img, removed, noise_std=0.0, tol=1e-12)
    # the paper's formulation: one sparse system per image over the removed pixels
    idx = {p: i for i, p in enumerate(zip(*np.nonzero(removed[0].numpy()), strict=True))}
    a = sparse.lil_matrix((len(idx), len(idx)))
    b = np.zeros(len(idx))
    v = img[0, 0].numpy()
    for (y, x), i in idx.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0) or not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                a[i, i] += wt
                if (y + dy, x + dx) in idx:
                    a[i, idx[(y + dy, x + dx)]] -= wt
                else:
                    b[i] += wt * v[y + dy, x + dx]
    sol = spsolve(a.tocsc(), b)
    got = np.array([ours[0, 0, y, x].item() for (y, x) in idx])
    np.testing.assert_allclose(got, sol, atol=1e-8)


def test_road_morf_is_lower_for_a_map_that_finds_the_pixels() -> None:
    net, x, good, bad = pixel_case(2)
    x = x + 0.0
    x[:, 1] = 0.5  # a second channel that the model ignores
    res = metrics.road(net, x, good, target=0, percentiles=(0.1, 0.5))
    worse = metrics.road(net, x, bad, target=0, percentiles=(0.1, 0.5))
    assert res.name == "road_morf" and res.details["curve"].shape == (2, 2)
    assert res.summary < worse.summary
    lerf = metrics.road(
        net, x, good, target=0, order="lerf", percentiles=(0.1, 0.5), score="accuracy"
    )
    assert lerf.name == "road_lerf" and lerf.higher_is_better and lerf.summary == 1.0
    assert res.details["residual"] < 1e-4
    again = metrics.road(net, x, good, target=0, percentiles=(0.1, 0.5))
    torch.testing.assert_close(res.per_sample, again.per_sample)  # seeded noise


# ---- sanity ---------------------------------------------------------------------------------------


def test_spearman_and_ssim() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(6)
    a = torch.rand(3, 12, 12, generator=g).round(decimals=1)  # many ties
    b = torch.rand(3, 12, 12, generator=g).round(decimals=1)
    ours = metrics.spearman(a, b)
    ref = [scipy_stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(3)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    assert metrics.spearman(a, a).tolist() == pytest.approx([1.0] * 3)
    const = torch.full((2, 12, 12), 0.4)
    assert metrics.spearman(const, const).tolist() == [1.0, 1.0]
    assert metrics.spearman(const, a[:2]).tolist() == [0.0, 0.0]
    assert metrics.ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    assert metrics.ssim(const, const).tolist() == pytest.approx([1.0, 1.0])
    assert (metrics.ssim(a, b) < 0.5).all()
    skm = pytest.importorskip("skimage.metrics")
    ref_ssim = skm.structural_similarity(
        a[0].double().numpy(), b[0].double().numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, full=True,
    )[1][5:-5, 5:-5].mean()  # fmt: skip
    assert metrics.ssim(a[:1], b[:1]).item() == pytest.approx(ref_ssim, abs=1e-4)
    with pytest.raises(ValueError, match=r"\(3, 12, 12\).*\(3, 12, 11\)"):
        metrics.spearman(a, b[..., :11])


def test_randomization_changes_gradcam_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    net = GapNet(width=16, classes=5).eval()
    with torch.no_grad():
        net.fc.weight.abs_()  # positive evidence everywhere: no original map is empty
    before = copy.deepcopy(net.state_dict())
    x = torch.rand(4, 3, 24, 24)
    method = camlens.GradCAM(net, layer="features")
    res = metrics.randomization_test(method, net, x, target=None)
    assert (res.details["original_maps"].flatten(1).std(1) > 0.05).all()
    assert res.details["layers"] == ["fc", "features.2", "features.0"]
    rho = res.details["spearman"]
    assert rho.shape == (3, 4) and res.details["ssim"].shape == (3, 4)
    assert res.per_sample.abs().mean() < 0.5  # low rank correlation once the model is random
    assert res.summary == pytest.approx(res.details["mean_spearman"][-1])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert hook_count(net) == 0 and not net.training


def test_randomization_does_not_change_a_constant_map() -> None:
    net = GapNet().eval()
    x = torch.rand(3, 3, 16, 16)

    def constant(model: nn.Module, xx: torch.Tensor, target: object) -> torch.Tensor:
        return torch.full((xx.shape[0], 16, 16), 0.5)

    res = metrics.randomization_test(
        constant, net, x, target=1, layers=["features.0", "fc"], return_maps=True
    )
    assert res.details["layers"] == ["fc", "features.0"]  # sorted top first
    assert (res.details["spearman"] == 1).all()
    torch.testing.assert_close(res.details["ssim"], torch.ones(2, 3))
    assert res.details["maps"].shape == (2, 3, 16, 16)


def test_randomization_options_and_errors() -> None:
    net = GapNet().eval()
    x = torch.rand(2, 3, 16, 16)
    method = camlens.GradCAM(net)
    res = metrics.randomization_test(method, net, x, similarity=("ssim",), layers=["fc"])
    assert res.details["similarity"] == "ssim" and "spearman" not in res.details
    with pytest.raises(ValueError, match="similarity"):
        metrics.randomization_test(method, net, x, similarity=("pearson",))
    with pytest.raises(ValueError, match="not a submodule"):
        metrics.randomization_test(method, net, x, layers=["nope"])
    with pytest.raises(ValueError, match="no parameters"):
        metrics.randomization_test(method, net, x, layers=["pool"])
    wrapped = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Flatten(), nn.LazyLinear(2)
    )
    wrapped(torch.rand(1, 3, 8, 8))
    assert metrics.cascading_groups(wrapped) == ["2", "0.0"]


def test_randomization_is_reproducible() -> None:
    net = GapNet().eval()
    x = torch.rand(2, 3, 16, 16)
    method = camlens.GradCAM(net, layer="features")
    a = metrics.randomization_test(method, net, x, seed=3)
    state = torch.random.get_rng_state()
    b = metrics.randomization_test(method, net, x, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    torch.testing.assert_close(a.details["spearman"], b.details["spearman"])
    one = metrics.randomization_test(method, net, x[1:], seed=3)  # batched == per sample
    torch.testing.assert_close(one.details["ssim"], a.details["ssim"][:, 1:], rtol=1e-4, atol=1e-5)
