"""Grad-CAM cost against plain inference: camlens, pytorch-grad-cam and Captum side by side.

Run from the repository root (CPU; with the defaults 7.5 minutes on a busy, shared 2-core machine,
less on an idle one)::

    python bench/bench_gradcam.py [--repeats 7] [--batch-time 8] [--batch-mem 32] [--threads T]
                                  [--thread-rounds 5] [--only time,memory,threads] [--json out.json]

It prints a Markdown table with, for each contender, the median time of one call at batch 8 and the
peak memory above the loaded model of one call at batch 32, both also as ratios to plain inference,
followed by the goals of the issue with PASS/MISS:

* camlens Grad-CAM takes at most 1.15x the time of plain inference,
* and at most 1.2x its peak memory,
* and is at least 2x faster than pytorch-grad-cam's GradCAM.

Set-up, the same for every contender: ``torch.manual_seed(0)``, ``torchvision.models.resnet50()``
(random weights) in eval mode, input ``torch.rand(B, 3, 224, 224)``, target class 281 for every sample,
layer ``layer4``, ``--threads`` intra-op threads (default: torch's default on this machine).

Contenders (each call is the whole product a user gets):

* ``inference``: ``with torch.no_grad(): model(x)``.
* ``camlens``: ``camlens.GradCAM(model, layer="layer4")(x, target=281)``; maps upsampled to 224x224 and
  min-max normalised per sample.
* ``pytorch-grad-cam``: ``GradCAM(model=model, target_layers=[model.layer4])(input_tensor=x,
  targets=[ClassifierOutputTarget(281)] * B)``; also upsampled (OpenCV) and normalised. Its constructor
  registers hooks on the model that stay until ``release()`` and the object keeps the whole autograd
  graph of its last call alive (``self.outputs`` after ``backward(retain_graph=True)``); kept between
  calls, both would slow down and inflate the other contenders. So it is constructed and released
  (``with GradCAM(...) as cam``) inside each timed call; construction only registers two hooks
  (microseconds). It runs ``loss.backward()``, which fills every parameter's ``.grad``; those are
  reset to ``None`` after each call, outside the timed region, so that state does not leak either.
* ``captum``: ``LayerGradCam(model, model.layer4).attribute(x, target=281, relu_attributions=True)``,
  constructed once (its constructor adds no hooks). It returns the 7x7 layer-resolution map: no
  upsampling, no normalisation, so it does a little less work than the other two.

Time: after 2 warm-up calls each, the contenders are interleaved round-robin for ``--repeats`` rounds
(inference, camlens, pytorch-grad-cam, captum, inference, ...; the starting contender rotates each
round so that none always runs right after the same neighbour), ``gc.collect()`` before every call,
outside the timed region. Machine noise (other processes, frequency changes) then hits every
contender alike; the table reports each one's median, and the ratios are median / inference median.

Memory: each contender runs in a fresh subprocess (``--mem-worker NAME``) that loads the model, makes
one warm-up call of the same contender at batch 1 (lazy one-time allocations such as oneDNN
primitives and thread pools then count as 'loaded'; parameter gradients a contender leaves behind are
reset to ``None`` so they do not), creates the batch-32 input, and reads its current RSS from
``/proc/self/statm`` as the baseline. It then resets the kernel's RSS high-water mark (writing ``5``
to ``/proc/self/clear_refs``), runs one batch-32 call and reports the high-water mark ``VmHWM`` of
``/proc/self/status`` minus the baseline: the peak memory the call added on top of the loaded model
and its input. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is *not* usable here: the kernel folds
the high-water mark of the memory image the process replaced at ``exec`` into it, and that image is
the parent's (``subprocess`` forks or vforks the parent first), so every worker's ``ru_maxrss`` started
at the benchmark process's own peak (about 1.7 GB after the timing) and the reset does not clear it;
it is used only where ``/proc`` is missing. Where the reset is not allowed, the high-water mark still
includes the model load; the table then says so and the numbers are upper bounds. Before the baseline
is read, ``malloc_trim(0)`` hands back what glibc cached from the warm-up. All workers run under the same
allocator settings, unless already set in the environment: ``MALLOC_ARENA_MAX=2`` (fewer per-thread
arenas holding freed memory) and ``MALLOC_MMAP_THRESHOLD_=131072``, which freezes glibc's initial
128 KiB mmap threshold: every tensor buffer of 128 KiB or more is mapped when allocated and unmapped
when freed, so the peak RSS follows the live tensors. With glibc's default *dynamic* threshold, freed
buffers are recycled through a fragmenting heap and the peak RSS of identical runs of plain inference
moved by about 50 MiB (392 to 441 MiB at batch 32, +-12%), more than the differences this measures;
with the frozen threshold repeated runs agree within 0.1 MiB, so ``--mem-runs`` defaults to 1 (the
minimum over the runs is reported). The timing runs in this process, with the allocator as it is.

Threads: one model and one ``camlens.GradCAM`` object shared by two Python threads, against one thread
doing the same calls in turn (``--thread-rounds`` rounds, each: one thread makes 4 calls at batch
``--batch-time``, and two threads make 2 calls each at the same time; plain inference the same way
beside it, as the reference for what the cores allow; the order rotates every round). Throughput is
images per second of wall clock, median over the rounds; every map of the two-thread runs is checked
against the one-thread maps. It is measured with ``--threads`` intra-op threads and with 1: camlens
serialises nothing (each call's capture belongs to its own thread, ``camlens.capture``), so with one
intra-op thread per call two threads can use two cores, and with torch's default what two threads gain
is what the cores have left after torch's own intra-op threads.

torchvision on the CI machine is a CUDA build beside a CPU torch; ``tests/support/tv_cpu_shim.py``
makes it importable and is imported first (a no-op where torchvision works).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "tests" / "support"))
with contextlib.suppress(ImportError):  # outside the repository a working torchvision needs no shim
    import tv_cpu_shim  # noqa: F401  (before torchvision and pytorch_grad_cam, which imports it)

import torch  # noqa: E402
import torchvision  # noqa: E402

import camlens  # noqa: E402

CONTENDERS = ("inference", "camlens", "pytorch-grad-cam", "captum")
TARGET = 281
SIZE = 224
WARMUP = 2
GOAL_TIME = 1.15
GOAL_MEM = 1.2
GOAL_SPEEDUP = 2.0
MIB = 1024 * 1024

Runner = Callable[[torch.Tensor], Any]


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def make_runner(name: str, model: torch.nn.Module) -> tuple[Runner, Callable[[], None]]:
    """``(run, after)``: one explained call on a batch, and the clean-up done outside the timing."""

    def nothing() -> None:
        pass

    if name == "inference":

        def run(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return model(x)

        return run, nothing

    if name == "camlens":
        cam = camlens.GradCAM(model, layer="layer4")

        def run(x: torch.Tensor) -> Any:
            return cam(x, target=TARGET).maps

        return run, nothing

    if name == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(TARGET)]

        def run(x: torch.Tensor) -> Any:
            with GradCAM(model=model, target_layers=[model.layer4]) as pgc:
                return pgc(input_tensor=x, targets=targets * x.shape[0])

        def after() -> None:
            model.zero_grad(set_to_none=True)

        return run, after

    if name == "captum":
        from captum.attr import LayerGradCam

        lgc = LayerGradCam(model, model.layer4)

        def run(x: torch.Tensor) -> Any:
            return lgc.attribute(x, target=TARGET, relu_attributions=True)

        return run, nothing

    raise ValueError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")


# ---- time ------------------------------------------------------------------------------------------
def measure_time(batch: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, interleaved round-robin after ``WARMUP`` calls each."""
    model = build_model()
    runners = {name: make_runner(name, model) for name in CONTENDERS}
    x = torch.rand(batch, 3, SIZE, SIZE)
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in range(WARMUP + repeats):
        order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
        for name in order:
            run, after = runners[name]
            gc.collect()
            t0 = time.perf_counter()
            out = run(x)
            dt = time.perf_counter() - t0
            del out
            after()
            if r >= WARMUP:
                samples[name].append(dt)
        if r < WARMUP:
            print(f"  time warm-up {r + 1}/{WARMUP} done", file=sys.stderr, flush=True)
        else:
            ms = ", ".join(f"{n} {samples[n][-1] * 1e3:.0f} ms" for n in CONTENDERS)
            print(f"  time round {r - WARMUP + 1}/{repeats}: {ms}", file=sys.stderr, flush=True)
    return samples


# ---- threads ---------------------------------------------------------------------------------------
def measure_threads(batch: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Images per second of one thread making 4 calls and of two threads making 2 calls each at once.

    Returns ``{contender: {"1 thread": [...], "2 threads": [...]}}`` for ``inference`` and ``camlens``,
    one value per round; the four measurements of a round run in a rotating order. Raises if a map
    from the two-thread runs differs from the one-thread map.
    """
    import threading

    model = build_model()
    cam = camlens.GradCAM(model, layer="layer4")
    xs = [torch.rand(batch, 3, SIZE, SIZE) for _ in range(2)]
    infer = {"inference": lambda x: model(x), "camlens": lambda x: cam(x, target=TARGET).maps}
    with torch.no_grad():
        expected = [cam(x, target=TARGET).maps for x in xs]

    def calls(name: str, x_ids: list[int], results: list[Any]) -> None:
        for i in x_ids:
            with torch.no_grad():
                results.append((i, infer[name](xs[i])))

    def one_thread(name: str) -> float:
        got: list[Any] = []
        t0 = time.perf_counter()
        calls(name, [0, 1, 0, 1], got)
        return 4 * batch / (time.perf_counter() - t0)

    def two_threads(name: str) -> float:
        got: list[list[Any]] = [[], []]
        threads = [threading.Thread(target=calls, args=(name, [k, k], got[k])) for k in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = 4 * batch / (time.perf_counter() - t0)
        if name == "camlens":
            for i, maps in got[0] + got[1]:
                if not torch.allclose(maps, expected[i], atol=1e-5):
                    raise AssertionError("a map from two threads differs from the sequential one")
        return rate

    jobs = [(n, k) for n in infer for k in ("1 thread", "2 threads")]
    out: dict[str, dict[str, list[float]]] = {n: {"1 thread": [], "2 threads": []} for n in infer}
    for r in range(rounds + 1):  # round 0 warms up
        for name, kind in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
            gc.collect()
            rate = one_thread(name) if kind == "1 thread" else two_threads(name)
            if r > 0:
                out[name][kind].append(rate)
        print(f"  threads round {r}/{rounds} done", file=sys.stderr, flush=True)
    return out


# ---- memory ----------------------------------------------------------------------------------------
def peak_rss_kib() -> tuple[int, str]:
    """The RSS high-water mark of this process's memory image, and where it was read."""
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        return int(hwm.split()[1]), "VmHWM"
    except (OSError, StopIteration):
        # Includes the parent's peak when the parent spawned this process: an upper bound.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def rss_now_kib() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def trim_malloc() -> bool:
    """Give the memory glibc's malloc caches after ``free`` back to the system; False if not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark ``VmHWM`` to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def mem_worker(name: str, batch: int, threads: int) -> None:
    """Run in a fresh process: print JSON with the peak RSS one batch-``batch`` call adds."""
    torch.set_num_threads(threads)
    model = build_model()
    run, after = make_runner(name, model)
    out = run(torch.rand(1, 3, SIZE, SIZE))
    del out
    after()
    x = torch.rand(batch, 3, SIZE, SIZE)
    gc.collect()
    trimmed = trim_malloc()
    baseline = rss_now_kib()
    reset = reset_peak_rss()
    out = run(x)
    peak, source = peak_rss_kib()
    del out
    after()
    result = {
        "name": name,
        "baseline_kib": baseline,
        "peak_kib": peak,
        "above_kib": peak - baseline,
        "reset": reset and source == "VmHWM",
        "peak_source": source,
        "trimmed": trimmed,
    }
    print(json.dumps(result), flush=True)


def measure_memory(name: str, batch: int, threads: int, runs: int) -> list[dict[str, Any]]:
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    out = []
    for _ in range(runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mem-worker", name]
        cmd += ["--batch-mem", str(batch), "--threads", str(threads)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"memory worker {name!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"  memory {name}: {res['above_kib'] / 1024:.0f} MiB above baseline",
            file=sys.stderr,
            flush=True,
        )
        out.append(res)
    return out


# ---- report ----------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def time_and_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The time and memory table with its goals; returns the numbers for ``--json``."""
    print(f"timing at batch {args.batch_time} ...", file=sys.stderr, flush=True)
    samples = measure_time(args.batch_time, args.repeats)
    print(f"memory at batch {args.batch_mem} ...", file=sys.stderr, flush=True)
    mem_runs = {
        n: measure_memory(n, args.batch_mem, args.threads, args.mem_runs) for n in CONTENDERS
    }

    t_med = {n: statistics.median(samples[n]) for n in CONTENDERS}
    mem = {n: min(r["above_kib"] for r in mem_runs[n]) / 1024 for n in CONTENDERS}
    t_ratio = {n: t_med[n] / t_med["inference"] for n in CONTENDERS}
    m_ratio = {
        n: mem[n] / mem["inference"] if mem["inference"] > 0 else float("nan") for n in CONTENDERS
    }

    lines = [
        f"| contender | median time batch {args.batch_time} (ms) | time / inference "
        f"| peak memory above model batch {args.batch_mem} (MiB) | memory / inference |",
        "|---|---:|---:|---:|---:|",
    ]
    for n in CONTENDERS:
        label = n + (" (7x7 map, no upsampling)" if n == "captum" else "")
        lines.append(
            f"| {label} | {t_med[n] * 1e3:.0f} | {t_ratio[n]:.2f}x | {mem[n]:.0f} | {m_ratio[n]:.2f}x |"
        )
    speedup = t_med["pytorch-grad-cam"] / t_med["camlens"]
    goals = [
        (
            "camlens time <= 1.15x inference",
            t_ratio["camlens"] <= GOAL_TIME,
            f"{t_ratio['camlens']:.2f}x",
        ),
        (
            "camlens memory <= 1.2x inference",
            m_ratio["camlens"] <= GOAL_MEM,
            f"{m_ratio['camlens']:.2f}x",
        ),
        ("camlens >= 2x faster than pytorch-grad-cam", speedup >= GOAL_SPEEDUP, f"{speedup:.2f}x"),
    ]
    lines += ["", "Goals:"]
    lines += [
        f"- {'PASS' if ok else 'MISS'}: {text} (measured {value})" for text, ok, value in goals
    ]
    if not all(r["reset"] for runs in mem_runs.values() for r in runs):
        lines.append(
            "- note: the RSS high-water mark could not be reset; memory numbers are upper bounds"
        )
    print("\n".join(lines), flush=True)

    return {
        "repeats": args.repeats,
        "warmup": WARMUP,
        "batch_time": args.batch_time,
        "batch_mem": args.batch_mem,
        "mem_runs": args.mem_runs,
        "mem_worker_env": {
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
            "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"),
        },
        "results": {
            n: {
                "time_ms_median": t_med[n] * 1e3,
                "time_ms_samples": [s * 1e3 for s in samples[n]],
                "time_ratio": t_ratio[n],
                "mem_mib": mem[n],
                "mem_mib_runs": [r["above_kib"] / 1024 for r in mem_runs[n]],
                "mem_baseline_mib_runs": [r["baseline_kib"] / 1024 for r in mem_runs[n]],
                "mem_ratio": m_ratio[n],
            }
            for n in CONTENDERS
        },
        "captum_note": "LayerGradCam returns the 7x7 layer map: no upsampling, no normalisation",
        "goals": [{"goal": text, "met": ok, "measured": value} for text, ok, value in goals],
    }


def thread_section(args: argparse.Namespace) -> dict[str, Any]:
    """Throughput of two threads sharing one model and one GradCAM, against one thread.

    Measured twice: with ``--threads`` intra-op threads (torch's default use of the cores) and with 1,
    where each call uses one core and two threads can only gain if their calls really overlap.
    """
    data: dict[str, Any] = {"batch": args.batch_time, "rounds": args.thread_rounds}
    lines = [
        "",
        f"Two threads sharing one model and one GradCAM object (batch {args.batch_time}, median of "
        f"{args.thread_rounds} rounds; every two-thread map equals the one-thread map):",
        "",
        "| intra-op threads | contender | 1 thread (images/s) | 2 threads (images/s) "
        "| 2 threads / 1 thread |",
        "|---:|---|---:|---:|---:|",
    ]
    for intra in sorted({1, args.threads}):
        torch.set_num_threads(intra)
        print(f"threads at batch {args.batch_time}, {intra} intra-op ...", file=sys.stderr)
        res = measure_threads(args.batch_time, args.thread_rounds)
        data[f"intra_op_{intra}"] = res
        for n, d in res.items():
            one, two = statistics.median(d["1 thread"]), statistics.median(d["2 threads"])
            lines.append(f"| {intra} | {n} | {one:.2f} | {two:.2f} | {two / one:.2f}x |")
    torch.set_num_threads(args.threads)
    print("\n".join(lines), flush=True)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--repeats", type=int, default=7, help="timed rounds after 2 warm-up calls (default 7)"
    )
    p.add_argument("--batch-time", type=int, default=8, help="batch size of the timing (default 8)")
    p.add_argument(
        "--batch-mem", type=int, default=32, help="batch size of the memory runs (default 32)"
    )
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads"
    )
    p.add_argument(
        "--mem-runs", type=int, default=1, help="fresh processes per contender; min is kept"
    )
    p.add_argument(
        "--thread-rounds", type=int, default=5, help="rounds of the thread measurement (default 5)"
    )
    p.add_argument(
        "--only",
        default="time,memory,threads",
        help="comma-separated sections to run: time, memory, threads (default: all)",
    )
    p.add_argument("--json", type=Path, help="also write the numbers to this file")
    p.add_argument("--mem-worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (
        args.repeats < 1
        or args.batch_time < 1
        or args.batch_mem < 1
        or args.threads < 1
        or args.mem_runs < 1
        or args.thread_rounds < 1
    ):
        p.error(
            "--repeats, --batch-*, --threads, --mem-runs and --thread-rounds must be at least 1"
        )
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if not sections or not sections <= {"time", "memory", "threads"}:
        p.error("--only takes a comma-separated subset of: time, memory, threads")

    if args.mem_worker:
        mem_worker(args.mem_worker, args.batch_mem, args.threads)
        return 0

    torch.set_num_threads(args.threads)
    header = [
        "# Grad-CAM cost on ResNet-50 (random weights, 224x224, CPU)",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, camlens {camlens.__version__}, "
        f"grad-cam {version('grad-cam')}, captum {version('captum')}, Python {platform.python_version()}",
        f"- threads: {args.threads}; time: median of {args.repeats} interleaved rounds after {WARMUP} warm-up "
        f"calls, batch {args.batch_time}; memory: peak RSS above the loaded model, batch {args.batch_mem}, "
        f"fresh process per contender, min of {args.mem_runs} runs",
        "",
    ]
    print("\n".join(header), flush=True)

    data: dict[str, Any] = {}
    if {"time", "memory"} <= sections:
        data.update(time_and_memory(args))
    elif sections & {"time", "memory"}:
        p.error("time and memory are measured together; pass both or neither")
    if "threads" in sections:
        data["threads"] = thread_section(args)
    if args.json:
        data.update(
            {
                "machine": machine(),
                "versions": {
                    "torch": torch.__version__,
                    "torchvision": torchvision.__version__,
                    "camlens": camlens.__version__,
                    "grad-cam": version("grad-cam"),
                    "captum": version("captum"),
                    "python": platform.python_version(),
                },
                "threads_intra_op": args.threads,
            }
        )
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
