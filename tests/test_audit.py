"""``camlens audit`` end to end on the local engine, on data sets with a planted answer.

The data are :mod:`camlens.audit.planted`'s: demo images written as PNG files in class folders, with
masks and a manifest; the "star" images carry a corner mark. The models are the bundled demo model
with a hand-built mark detector, so every run is deterministic and takes about a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from camlens.audit import ExplainConfig, audit, planted, read_results
from camlens.audit.analysis import CUE_SHARE
from camlens.audit.batch import Explainer
from camlens.audit.dataset import map_labels, open_source
from camlens.audit.store import ResultStore
from camlens.demo import CLASSES

MODEL = "camlens.audit.planted:{}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> planted.Planted:
    return planted.make_planted(tmp_path_factory.mktemp("planted"), n=120, seed=1)


@pytest.fixture(scope="module")
def centred(tmp_path_factory: pytest.TempPathFactory) -> planted.Planted:
    """No mark; the circles always sit in the centre of their images."""
    return planted.make_planted(
        tmp_path_factory.mktemp("centred"), n=120, seed=2, shortcut=None, centred="circle"
    )


def cfg(model: str, **kw: object) -> ExplainConfig:
    return ExplainConfig(model=MODEL.format(model), device="cpu", **kw)  # type: ignore[arg-type]


def kinds(summary: dict) -> list[tuple[str, str]]:
    return sorted((f["class"], f["kind"]) for f in summary["findings"])


def cli(argv: list[str]) -> int:
    from camlens.cli import main

    return main(argv)


# --------------------------------------------------------------------------- what it finds


def test_the_planted_shortcut_is_named_and_no_other_class(
    data: planted.Planted, tmp_path: Path
) -> None:
    res = audit(data.images, tmp_path / "folder", cfg("shortcut_model"), report=False)
    assert res.images == 120 and res.errors == 0 and res.new == 120
    assert kinds(res.summary) == [("star", "fixed_position")]  # no masks: judged by image content
    f = res.summary["findings"][0]
    assert f["share"] >= 0.9
    assert f["evidence"]["hotspot"] == [pytest.approx(1.5 / 12), pytest.approx(1.5 / 12)]
    assert f["evidence"]["content_from"] == "image saliency"
    star = next(c for c in res.summary["per_class"] if c["class"] == "star")
    assert star["count"] == 20 and star["accuracy"] == 1.0
    # with masks the same class is found, and its maps are also off the object
    res = audit(data.manifest, tmp_path / "manifest", cfg("shortcut_model"), report=False)
    assert kinds(res.summary) == [("star", "fixed_position"), ("star", "off_object")]
    off = next(f for f in res.summary["findings"] if f["kind"] == "off_object")
    assert off["evidence"]["hit_rate"] <= 0.1 and off["evidence"]["energy_in"] < 0.05


def test_an_honest_model_gives_no_finding_also_where_objects_sit_in_one_place(
    centred: planted.Planted, tmp_path: Path
) -> None:
    for src, name in ((centred.images, "folder"), (centred.manifest, "manifest")):
        res = audit(src, tmp_path / name, cfg("honest_model"), report=False)
        assert res.summary["findings"] == [], name
        circle = next(c for c in res.summary["per_class"] if c["class"] == "circle")
        hot = circle["methods"]["gradcam"]["hotspot"]
        # the circle maps gather in the centre as much as a cue would need to ...
        assert hot["peak_share"] >= CUE_SHARE
        # ... because the circles do, and each map follows its own image
        assert hot["content_share"] >= 0.8 and hot["cue_share"] <= 0.1


def test_masks_give_off_object_findings_on_a_model_that_looks_beside(
    data: planted.Planted, tmp_path: Path
) -> None:
    res = audit(data.manifest, tmp_path / "out", cfg("beside_model"), report=False)
    assert sorted(f["kind"] for f in res.summary["findings"]) == ["off_object"] * 6
    for f in res.summary["findings"]:
        assert f["share"] >= 0.8 and f["evidence"]["miss_distance"] > 0.2


def test_a_mark_on_some_images_splits_the_class(tmp_path: Path) -> None:
    d = planted.make_planted(tmp_path / "data", n=180, seed=3, mark_share=0.3)
    res = audit(d.images, tmp_path / "out", cfg("mixed_model"), report=False)
    assert kinds(res.summary) == [("star", "split")]
    f = res.summary["findings"][0]
    assert f["share"] == pytest.approx(0.3, abs=0.05)
    marked = {str(p) for p, m in zip(d.paths, d.marked, strict=True) if m}
    assert set(f["examples"]) <= marked


# --------------------------------------------------------------------------- the rows


def test_rows_hold_the_raw_maps_and_statistics(data: planted.Planted, tmp_path: Path) -> None:
    res = audit(
        data.manifest,
        tmp_path,
        cfg("shortcut_model", methods=("gradcam", "gradcam++")),
        report=False,
    )
    t = read_results(tmp_path)
    assert t.num_rows == 240 and t.schema.field("map").type == pa.list_(pa.float32())
    assert set(t.column("method").to_pylist()) == {"gradcam", "gradcam++"}
    d = t.to_pydict()
    assert all(e == "" for e in d["error"]) and all(ly == "shift" for ly in d["layer"])
    assert all(
        s == [12, 12] and len(m) == 144 for s, m in zip(d["map_shape"], d["map"], strict=True)
    )
    for c in (
        "peak_y",
        "peak_x",
        "centroid_y",
        "entropy",
        "border",
        "content_y",
        "hit",
        "energy_in",
    ):
        v = np.array(d[c])
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all(), c
    assert d["label"] == d["pred"] == d["target"]  # this model is right on every image
    # a stored map is the method's raw map for that image, recomputed here
    ex = Explainer(cfg("shortcut_model"))
    i = d["path"].index(str(data.paths[7].resolve()))
    from camlens.audit import load_example
    from camlens.audit.dataset import Item

    view = torch.from_numpy(load_example(Item(d["path"][i]), ex.preprocess).view)[None]
    import camlens

    raw = camlens.GradCAM(ex.loaded.model, layer="shift")(view, target=d["label"][i]).raw[0]
    np.testing.assert_allclose(
        np.array(d["map"][i]).reshape(12, 12), raw.numpy(), rtol=1e-5, atol=1e-6
    )
    assert d["score"][i] == pytest.approx(
        float(ex.loaded.model(view)[0, d["label"][i]].detach()), rel=1e-5
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"] == ["gradcam", "gradcam++"] and summary["images"] == 120
    assert summary["data"]["classes"][3] == {"index": 3, "name": "star", "source": "star"}
    assert res.summary["findings"] and summary["findings"] == json.loads(
        json.dumps(res.summary["findings"])
    )


def test_boxes_in_a_parquet_manifest(data: planted.Planted, tmp_path: Path) -> None:
    paths, labels, boxes = [], [], []
    for p, name in zip(data.paths[:30], data.labels[:30], strict=True):
        from PIL import Image

        m = np.asarray(Image.open(data.root / "masks" / name / p.name)) > 0
        ys, xs = np.nonzero(m)
        paths.append(str(p))
        labels.append(name)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
    man = tmp_path / "boxes.parquet"
    pq.write_table(pa.table({"path": paths, "label": labels, "box": boxes}), man)
    audit(man, tmp_path / "out", cfg("honest_model"), report=False)
    d = read_results(tmp_path / "out").to_pydict()
    order = [d["path"].index(p) for p in paths]
    area = np.array([(b[2] - b[0]) * (b[3] - b[1]) / 96**2 for b in boxes])
    np.testing.assert_allclose(np.array(d["object_area"])[order], area, rtol=1e-5)
    assert np.mean(np.array(d["hit"])) >= 0.9  # the honest maps point into the boxes


# --------------------------------------------------------------------------- robustness


def test_unreadable_files_are_rows_with_an_error_and_the_run_exits_0(
    data: planted.Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(data.images, root)
    (root / "star" / "zz_garbage.png").write_bytes(b"this is not a png")
    good = (root / "circle").iterdir().__next__().read_bytes()
    (root / "circle" / "zz_truncated.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    code = cli(
        [
            "audit",
            str(root),
            "--model",
            MODEL.format("shortcut_model"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--no-report",
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "audited 122 images" in last and "2 unreadable" in last
    d = read_results(out).to_pydict()
    bad = {p: e for p, e in zip(d["path"], d["error"], strict=True) if e}
    assert sorted(Path(p).name for p in bad) == ["zz_garbage.png", "zz_truncated.png"]
    assert "not an image" in bad[str((root / "star" / "zz_garbage.png").resolve())]
    i = d["path"].index(str((root / "star" / "zz_garbage.png").resolve()))
    assert d["map"][i] == [] and d["pred"][i] == -1 and d["label"][i] == 3 and d["layer"][i] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 2 and kinds(summary) == [("star", "fixed_position")]


def test_resume_after_an_interruption_loses_nothing_and_duplicates_nothing(
    data: planted.Planted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "audit",
        str(data.images),
        "--model",
        MODEL.format("shortcut_model"),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--quiet",
        "--no-report",
    ]
    loud = [a for a in argv if a != "--quiet"]
    assert cli([*loud, "--out", str(tmp_path / "whole")]) == 0
    shown = capsys.readouterr()
    assert "classes: folder names matched to the model's class names: circle=0" in shown.out
    assert "img/s" in shown.err  # the progress bar
    assert "finding: star (gradcam): fixed position" in shown.out
    whole = read_results(tmp_path / "whole").to_pydict()

    calls = {"n": 0}
    real = Explainer.__call__

    def interrupted(self: Explainer, batch: dict) -> pa.Table:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Explainer, "__call__", interrupted)
    out = tmp_path / "resumed"
    assert cli([*argv, "--out", str(out)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert read_results(out).num_rows == 3 * 16  # the three finished batches are kept
    monkeypatch.setattr(Explainer, "__call__", real)
    assert cli([*argv, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "72 new" in last and "48 resumed" in last
    resumed = read_results(out).to_pydict()
    assert sorted(resumed["path"]) == sorted(whole["path"])  # nothing lost, nothing twice
    assert len(set(resumed["path"])) == 120
    by_path = {p: m for p, m in zip(resumed["path"], resumed["map"], strict=True)}
    for p, m in zip(whole["path"], whole["map"], strict=True):
        np.testing.assert_allclose(by_path[p], m, rtol=1e-5, atol=1e-7)
    # and a third run has nothing to do
    assert cli([*argv, "--out", str(out)]) == 0
    assert read_results(out).num_rows == 120


def test_the_store_recovers_from_a_crash_in_any_step(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rows = [pa.table({"path": [f"{i}.png"], "error": [""]}) for i in range(5)]
    for t in rows:
        store.write(t)
    (store.root / ".part-00000009-deadbeef.parquet.1234.tmp").write_bytes(b"half a shard")
    # a compaction killed after the merged shard was renamed into place, before the old ones went
    old = [p.name for p in store.shards()[:3]]
    store.write(pa.concat_tables(rows[:3]), replaces=old)
    assert store.count() == (8, 0)  # as found: three rows twice
    again = ResultStore(tmp_path)
    again.recover()
    assert again.count() == (5, 0)
    assert not [p for p in again.root.iterdir() if p.name.startswith(".")]
    assert again.compact(target_rows=16) == 1 and again.count() == (5, 0)
    assert len(again.done_keys()) == 5


# --------------------------------------------------------------------------- the command line


def test_user_errors_are_one_line_with_exit_2(
    data: planted.Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", MODEL.format("honest_model"), "--device", "cpu", "--quiet", "--no-report"]
    mixed = tmp_path / "mixed"
    for name in ("circle", "zebra"):
        (mixed / name).mkdir(parents=True)
        shutil.copy(data.paths[0], mixed / name / "a.png")
    cases = [
        (["audit", str(tmp_path / "nope"), *model], "no such data set"),
        (["audit", str(data.images), *model, "--methods", "gradcan"], "unknown method 'gradcan'"),
        (
            ["audit", str(data.images), *model, "--batch-size", "0"],
            "--batch-size must be at least 1",
        ),
        (["audit", str(data.images), "--model", "nosuch:thing"], "unknown model"),
        (
            ["audit", str(data.images), *model, "--layer", "nosuch"],
            "layer 'nosuch' is not a submodule",
        ),
        (["audit", str(mixed), *model], "1 folder names match the model's class names but 1 do"),
    ]
    for argv, msg in cases:
        never = tmp_path / "never"
        assert cli([*argv, "--out", str(never)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("camlens audit: error: ") and msg in err and "\n" not in err, err
        assert not never.exists()  # a refused run writes nothing
    out = tmp_path / "out"
    assert cli(["audit", str(data.images), *model, "--out", str(out)]) == 0
    other = ["--model", MODEL.format("shortcut_model"), "--device", "cpu", "--quiet", "--no-report"]
    assert cli(["audit", str(data.images), *other, "--out", str(out)]) == 2
    assert "holds an audit with another model" in capsys.readouterr().err
    assert cli(["audit", str(data.images), *other, "--out", str(out), "--force"]) == 0
    assert kinds(json.loads((out / "summary.json").read_text())) == [("star", "fixed_position")]


def test_a_bad_manifest_row_is_refused_before_anything_is_written(
    data: planted.Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed box or an empty path on row 26 of 30 (line 26 of the CSV: the header is line 1;
    the 25th row of a Parquet file) is found before the first batch: exit 2, one line naming the
    row, and no --out folder (batches of 8 would have written 3 shards before reaching it)."""
    paths = [str(p) for p in data.paths[:30]]
    boxes = ["0,0,40,40"] * 30
    boxes[24] = "30,30,10,10"  # x1 < x0
    man = tmp_path / "bad.csv"
    man.write_text(
        "path,box\n" + "".join(f'{p},"{b}"\n' for p, b in zip(paths, boxes, strict=True))
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("path\n" + "".join(f"{p}\n" for p in paths[:27]) + '""\n' + paths[28] + "\n")
    table = pa.table({"path": paths, "box": boxes})
    pq.write_table(table, tmp_path / "bad.parquet")
    model = ["--model", MODEL.format("honest_model"), "--device", "cpu", "--quiet", "--no-report"]
    cases = [
        (man, "row 26: box '30,30,10,10' is empty"),
        (empty, "row 29: empty path"),
        (tmp_path / "bad.parquet", "row 25: box '30,30,10,10' is empty"),
    ]
    for source, msg in cases:
        out = tmp_path / f"out-{source.name}"
        code = cli(["audit", str(source), *model, "--batch-size", "8", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith("camlens audit: error: manifest ") and msg in err, err
        assert "\n" not in err and "Traceback" not in err
        assert not out.exists()  # nothing written: no results.parquet/, no run.json
    with pytest.raises(ValueError, match="row 26: box"):
        open_source(man, None)


def test_a_model_that_fails_on_the_first_batch_leaves_nothing(
    data: planted.Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--size 3`` is smaller than the planted models' 12x12 kernel: the first batch of 8 fails in
    the methods (a folder: every label known) or in the forward that predicts the missing labels (a
    manifest with some labels empty). Both are a model error (exit 2, one line), and --out is never
    made: run.json is written with the first shard, which a good run then does."""
    man = tmp_path / "some-labels.csv"
    rows = [
        f"{p},{lab if i % 2 else ''}\n"
        for i, (p, lab) in enumerate(zip(data.paths[:20], data.labels[:20], strict=True))
    ]
    man.write_text("path,label\n" + "".join(rows))
    model = ["--model", MODEL.format("honest_model"), "--device", "cpu", "--quiet", "--no-report"]
    for source in (data.images, man):
        out = tmp_path / f"out-{source.name}"
        argv = ["audit", str(source), *model, "--batch-size", "8", "--out", str(out)]
        code = cli([*argv, "--size", "3"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith(
            "camlens audit: error: the model failed on an input of shape (8, 3, 3, 3)"
        )
        assert "\n" not in err and "internal error" not in err
        assert not out.exists()
    assert cli(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["model"] == MODEL.format("honest_model") and run["config"]["size"] is None
    assert run["config"]["target"] == "label" and read_results(out).num_rows == 20


def test_a_csv_manifest_with_a_byte_order_mark(data: planted.Planted, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; the first column is still ``path``."""
    man = tmp_path / "bom.csv"
    rows = list(zip(data.paths[:12], data.labels[:12], strict=True))
    man.write_text(
        "path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows), encoding="utf-8-sig"
    )
    assert man.read_bytes()[:3] == b"\xef\xbb\xbf"
    src = open_source(man, list(CLASSES))
    assert src.has_labels and src.label_index == {
        n: list(CLASSES).index(n) for n in set(data.labels[:12])
    }
    res = audit(man, tmp_path / "out", cfg("honest_model"), report=False)
    assert res.images == 12 and res.errors == 0
    d = read_results(tmp_path / "out").to_pydict()
    got = dict(zip(d["path"], d["label"], strict=True))
    assert got == {str(p): list(CLASSES).index(lab) for p, lab in rows}


def test_methods_are_read_as_explain_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--methods all`` is every method of the catalog, aliases are their registry names, each
    once, in the order given (the audit itself is replaced: only the parsed arguments are looked at)."""
    import camlens.audit.runner as runner
    from camlens import _catalog

    seen: list[tuple[str, ...]] = []

    def fake(data: str, out: str, config: ExplainConfig, **kw: object) -> None:
        seen.append(config.methods)
        raise ValueError("stopped here by the test")

    monkeypatch.setattr(runner, "audit", fake)
    for methods in ("all", "Grad-CAM++, gradcam,gradcampp", "layercam,all"):
        assert cli(["audit", str(tmp_path), "--methods", methods, "--quiet"]) == 2
        assert "stopped here by the test" in capsys.readouterr().err
    every = tuple(_catalog.names())
    assert seen == [
        every,
        ("gradcam++", "gradcam"),
        ("layercam", *(m for m in every if m != "layercam")),
    ]


def test_class_mapping(tmp_path: Path) -> None:
    m, classes, how = map_labels(
        ["Star", "circle"], ["circle", "square", "triangle", "star"], "folder"
    )
    assert m == {"Star": 3, "circle": 0} and [c.name for c in classes] == ["circle", "star"]
    m, classes, how = map_labels(["zebra", "ant"], ["circle", "square"], "folder")
    assert m == {"ant": 0, "zebra": 1} and "sorted order" in how and classes[0].name == "circle"
    with pytest.raises(ValueError, match="the model only 2"):
        map_labels(["a", "b", "c"], ["x", "y"], "folder")
    man = tmp_path / "m.csv"
    man.write_text("path,label\na.png,3\nb.png,\n")
    src = open_source(man, ["c0", "c1", "c2", "c3"])
    assert src.has_labels and [c.name for c in src.classes] == ["c3"]
    man.write_text("path,label\na.png,9\n")
    with pytest.raises(ValueError, match="out of range"):
        open_source(man, ["c0", "c1"])
    man.write_text("file\na.png\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        open_source(man, None)


def test_decode_batch_reads_the_ray_plan_columns(data: planted.Planted) -> None:
    """The Ray decode stage gets columns as numpy arrays (boxes as arrays or None); it must load the
    same examples as the local engine's per-item loading."""
    from camlens.audit.dataset import Item
    from camlens.audit.example import collate, decode_batch, load_example
    from camlens.models import Preprocess

    pre = Preprocess((96, 96))
    paths = np.array([str(data.paths[0]), str(data.paths[1]), "/no/such.png"], dtype=object)
    boxes = np.empty(3, dtype=object)
    boxes[:] = [np.array([10.0, 20.0, 30.0, 50.0]), None, None]
    got = decode_batch(
        {
            "path": paths,
            "label": np.array([0, 1, 2]),
            "mask": np.array(["", "", ""], dtype=object),
            "box": boxes,
        },
        pre,
    )
    want = collate(
        [
            load_example(Item(str(data.paths[0]), 0, "", (10, 20, 30, 50)), pre),
            load_example(Item(str(data.paths[1]), 1), pre),
            load_example(Item("/no/such.png", 2), pre),
        ],
        (96, 96),
    )
    np.testing.assert_array_equal(got["view"], want["view"])
    assert got["has_mask"].tolist() == [True, False, False]
    assert int(got["mask"][0].sum()) == 20 * 30 and got["mask"][0, 20:50, 10:30].all()
    assert got["error"][2].startswith("no such image file") and got["label"].tolist() == [0, 1, 2]
