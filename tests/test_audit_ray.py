"""The Ray engine on a local cluster of 2 CPUs gives the rows the local engine gives.

One cluster for the session (start-up costs seconds, and half a minute on a loaded machine). The
data set is small (48 images with masks and one unreadable file); the Ray run itself takes 20-50 s on
2 shared cores, most of it the actor's start (importing torch, loading the model).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from camlens.audit import ExplainConfig, audit, planted, read_results  # noqa: E402
from camlens.audit.engines import init_ray  # noqa: E402

MODEL = "camlens.audit.planted:shortcut_model"


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    t0 = time.perf_counter()
    init_ray(num_cpus=2)  # retried: a loaded machine can make the first start time out
    print(f"ray.init: {time.perf_counter() - t0:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = planted.make_planted(tmp_path_factory.mktemp("ray-data"), n=48, seed=4)
    bad = d.root / "images" / "star" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG broken")
    with d.manifest.open("a") as f:
        f.write("images/star/zz_broken.png,star,\n")
    return d.manifest


def by_key(out: Path) -> dict[tuple[str, str], dict]:
    d = read_results(out).to_pydict()
    rows = [dict(zip(d, vals, strict=True)) for vals in zip(*d.values(), strict=True)]
    keyed = {(r["path"], r["method"]): r for r in rows}
    assert len(keyed) == len(rows)  # no (image, method) twice
    return keyed


@pytest.mark.slow
def test_ray_resumes_a_local_run_and_writes_the_rows_the_local_engine_writes(
    cluster: None, manifest: Path, tmp_path: Path
) -> None:
    """One Ray run (each starts an actor pool that imports torch and loads the model: tens of
    seconds on a loaded 2-core machine) checks both: it resumes a partial local run, and every row it
    writes equals the local engine's."""
    config = ExplainConfig(model=MODEL, methods=("gradcam", "layercam"), device="cpu")
    t0 = time.perf_counter()
    local = audit(manifest, tmp_path / "local", config, batch_size=8, report=False)
    t_local = time.perf_counter() - t0
    # a run that stopped after 20 images: its shard is kept, Ray does the other 29
    out = tmp_path / "ray"
    import pyarrow.parquet as pq

    done = read_results(tmp_path / "local")
    first = sorted(set(done.column("path").to_pylist()))[:20]
    import pyarrow.compute as pc

    partial = done.filter(pc.is_in(done.column("path"), value_set=pa.array(first)))
    (out / "results.parquet").mkdir(parents=True)
    pq.write_table(partial, out / "results.parquet" / "part-00000000-00000000.parquet")
    t0 = time.perf_counter()
    remote = audit(manifest, out, config, engine="ray", batch_size=8, report=False)
    t_ray = time.perf_counter() - t0
    print(f"local engine {t_local:.1f} s for 49 images; ray engine {t_ray:.1f} s for 29")
    assert remote.skipped == 20 and remote.new == 29 and remote.images == 49
    a, b = by_key(tmp_path / "local"), by_key(out)
    assert len(a) == 49 * 2 and a.keys() == b.keys()  # nothing lost, nothing twice
    for key, ra in a.items():
        rb = b[key]
        for col in ("label", "pred", "target", "layer", "map_shape", "error"):
            assert ra[col] == rb[col], (key, col)
        np.testing.assert_allclose(ra["map"], rb["map"], rtol=1e-5, atol=1e-7)
        for col in (
            "score",
            "peak_y",
            "peak_x",
            "entropy",
            "border",
            "content_y",
            "hit",
            "energy_in",
        ):
            np.testing.assert_allclose(
                ra[col], rb[col], rtol=1e-5, atol=1e-7, err_msg=str((key, col))
            )
    assert sum(1 for r in b.values() if r["error"]) == 2  # the broken file, once per method
    assert remote.errors == local.errors == 1
    assert remote.summary["findings"] == local.summary["findings"]
    assert {(f["class"], f["kind"]) for f in remote.summary["findings"]} == {
        ("star", "fixed_position"),
        ("star", "off_object"),
    }
