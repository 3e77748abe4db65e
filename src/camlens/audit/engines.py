"""The two engines: a streaming pipeline on one machine, and Ray Data on a cluster.

Both take the items still to do, run the same per-batch function (:class:`camlens.audit.batch.Explainer`
on batches made by :func:`camlens.audit.example.collate`) and hand every resulting table to the
:class:`~camlens.audit.store.ResultStore`, so they write the same rows.

Local (:func:`run_local`): decode threads load examples ahead of the model (a bounded window, in
order), the calling thread batches them and runs the explainer on the model's device, and a writer
thread writes each batch's shard while the next batch runs. Memory holds the window, one batch in the
model and one waiting to be written: it does not grow with the data set.

Ray (:func:`run_ray`): the items to do are written to a Parquet plan in ``DIR``; then
``read_parquet(plan) -> repartition(batch_size rows per block) -> map_batches(decode_batch)`` (tasks) ``-> map_batches(Explainer,
compute=ActorPoolStrategy(size=workers), num_gpus=...)`` (actors that load the model once) and the
driver streams the result blocks into shards. Workers must see the image files and ``DIR`` at the same
paths (one machine, or a shared file system).
"""

from __future__ import annotations

import queue
import secrets
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlens.audit.batch import ExplainConfig, Explainer
from camlens.audit.dataset import Item
from camlens.audit.example import Example, collate, decode_batch, load_example
from camlens.audit.store import ResultStore, path_key

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["init_ray", "pending", "run_local", "run_ray"]

OnBatch = Callable[["pa.Table"], None]


def pending(items: Iterable[Item], done: np.ndarray) -> Iterator[Item]:
    """The items whose path is not among the sorted ``done`` keys (see :meth:`ResultStore.done_keys`)."""
    if len(done) == 0:
        yield from items
        return
    for it in items:
        k = np.uint64(path_key(it.path))
        j = int(np.searchsorted(done, k))
        if j < len(done) and done[j] == k:
            continue
        yield it


def _decoded(
    items: Iterable[Item], preprocess: Any, workers: int, window: int
) -> Iterator[Example]:
    """Examples in item order, loaded by ``workers`` threads at most ``window`` items ahead."""
    if workers <= 0:
        for it in items:
            yield load_example(it, preprocess)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camlens-decode")
    ahead: deque[Future[Example]] = deque()
    try:
        for it in items:
            ahead.append(pool.submit(load_example, it, preprocess))
            if len(ahead) >= window:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Writer:
    """A thread that writes tables to the store while the model computes the next batch."""

    def __init__(self, store: ResultStore, on_batch: OnBatch | None) -> None:
        self.store, self.on_batch = store, on_batch
        self.q: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="camlens-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            t = self.q.get()
            if t is None:
                return
            if self.error is not None:
                continue
            try:
                self.store.write(t)
                if self.on_batch is not None:
                    self.on_batch(t)
            except BaseException as exc:
                self.error = exc

    def put(self, table: pa.Table) -> None:
        self._check()
        self.q.put(table)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        self.q.put(None)
        self.thread.join()
        self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error


def run_local(
    explainer: Explainer,
    items: Iterable[Item],
    store: ResultStore,
    batch_size: int = 32,
    workers: int = 2,
    on_batch: OnBatch | None = None,
) -> None:
    """Run the local streaming pipeline over ``items``.

    An exception or ``KeyboardInterrupt`` stops it after the batches already computed are written:
    only the batch in the model is lost.

    Args:
        explainer: the per-batch function, with the model loaded.
        items: the items to do (already without the finished ones).
        store: where the shards go.
        batch_size: images per batch.
        workers: decode threads (0: decode in the calling thread).
        on_batch: called with each table after its shard is written (progress).
    """
    size = tuple(explainer.preprocess.size)
    writer = _Writer(store, on_batch)
    try:
        buf: list[Example] = []
        for ex in _decoded(items, explainer.preprocess, workers, 2 * batch_size + workers):
            buf.append(ex)
            if len(buf) == batch_size:
                writer.put(explainer(collate(buf, (size[0], size[1]))))
                buf = []
        if buf:
            writer.put(explainer(collate(buf, (size[0], size[1]))))
    finally:
        writer.close()


#: Rows per file of a Ray plan.
PLAN_ROWS = 65_536


def _write_plan(items: Iterable[Item], folder: Path, rows_per_file: int) -> int:
    """Write the items to Parquet files of ``rows_per_file`` rows in ``folder``; returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.int64()),
            ("mask", pa.string()),
            ("box", pa.list_(pa.float64())),
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    n = files = 0
    buf: list[Item] = []

    def flush() -> None:
        nonlocal files
        table = pa.table(
            {
                "path": [i.path for i in buf],
                "label": [i.label for i in buf],
                "mask": [i.mask for i in buf],
                "box": [list(i.box) if i.box is not None else None for i in buf],
            },
            schema=sch,
        )
        pq.write_table(table, folder / f"plan-{files:08d}.parquet")
        files += 1

    for it in items:
        buf.append(it)
        n += 1
        if len(buf) == rows_per_file:
            flush()
            buf = []
    if buf:
        flush()
    return n


def init_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, attempts: int = 3
) -> None:
    """``ray.init`` without the dashboard; a local start is tried up to ``attempts`` times.

    On a loaded machine a local raylet can give up waiting for its metrics agent (a fixed timeout in
    Ray) and the start fails; a second start usually succeeds. Joining a cluster (``address``) is tried
    once.

    Raises:
        ImportError: Ray is not installed.
    """
    import ray

    tries = attempts if address is None else 1
    for i in range(tries):
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=not quiet,
            )
            return
        except Exception:
            ray.shutdown()
            if i == tries - 1:
                raise


def run_ray(
    config: ExplainConfig,
    preprocess: Any,
    items: Iterable[Item],
    store: ResultStore,
    batch_size: int = 32,
    workers: int = 1,
    address: str | None = None,
    on_batch: OnBatch | None = None,
    quiet: bool = True,
) -> None:
    """Run the audit's per-batch function with Ray Data (see the module docstring).

    Args:
        config: what to explain; each actor loads the model from it (on a GPU where the cluster has
            one: one GPU per actor).
        preprocess: the model's pre-processing, for the decode tasks.
        items: the items to do.
        store: where the shards go (written by this process).
        batch_size: images per batch.
        workers: actors (model copies).
        address: a cluster to join (``ray.init(address=...)``); ``None`` starts a local one unless Ray
            is already initialised in this process.
        on_batch: called with each table after its shard is written.
        quiet: no Ray progress bars.

    Raises:
        ImportError: Ray is not installed.
    """
    try:
        import ray
        import ray.data
        from ray.data import ActorPoolStrategy
    except ImportError as exc:
        raise ImportError(
            f'the ray engine needs Ray Data: pip install "camlens[ray]" ({exc})'
        ) from exc

    store.out.mkdir(parents=True, exist_ok=True)
    plan = store.out / f".plan-{secrets.token_hex(4)}"
    started = False
    try:
        if _write_plan(items, plan, PLAN_ROWS) == 0:
            return
        if not ray.is_initialized():
            init_ray(address, quiet=quiet)
            started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not quiet
        if quiet:
            ctx.print_on_execution_start = False
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        # Leave a CPU for the read and decode tasks, or an actor pool that takes every CPU waits
        # forever for its input.
        actor_cpus = 1.0 if gpus else max(0.25, min(1.0, (cpus - 1) / max(1, workers)))
        cfg = replace(config, device="cuda" if gpus else "cpu")
        # A block is the unit that streams through the actors and back to the driver: one batch per
        # block, so an interruption loses at most the batches in flight. (The streaming repartition
        # splits the plan's large read blocks; Ray merges small files into one read.)
        ds = ray.data.read_parquet(str(plan)).repartition(target_num_rows_per_block=batch_size)
        ds = ds.map_batches(
            decode_batch,  # type: ignore[arg-type]
            fn_kwargs={"preprocess": preprocess},
            batch_size=batch_size,
            batch_format="numpy",
        )
        ds = ds.map_batches(
            Explainer,
            fn_constructor_kwargs={"config": cfg},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=workers),
            num_gpus=1 if gpus else 0,
            num_cpus=actor_cpus,
        )
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            store.write(table)
            if on_batch is not None:
                on_batch(table)
    finally:
        shutil.rmtree(plan, ignore_errors=True)
        if started:
            ray.shutdown()
