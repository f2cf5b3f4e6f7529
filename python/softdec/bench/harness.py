"""The one timing helper every softdec benchmark uses.

- ``measure(fn)``: warm-up, then repeated timed runs; median and p20/p80.
- ``copy_bandwidth()``: memory bandwidth of a large tensor copy, measured in
  the same run, which defines the byte floor (bytes a kernel must move divided
  by that bandwidth).
- ``Case``: one benchmark row: the softdec callable, its baselines (eager
  reference, torch.compile of it, other formulations) and the bytes it must move.
- ``run_cases``: times a list of cases, prints the table with progress, and
  returns rows ready for JSON.

Noise. A shared 2-core VM runs in slow and fast phases lasting seconds (the
copy bandwidth moved between 22 and 37 GB/s from run to run, and one
microsecond-scale call by up to 2x between consecutive windows). So every fast
callable of a case (first call under ``FAST_S``) is timed in ``ROUNDS`` windows,
round-robin over the case's callables (softdec and baselines alike), and each
keeps its window with the lowest median; the copy bandwidth likewise keeps its
best window. Slow callables (a single call spans the phases) get one window.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch


@dataclasses.dataclass
class Stats:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int

    def as_dict(self):
        return dataclasses.asdict(self)


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 3,
            min_reps: int = 5, max_reps: int = 200, min_time_s: float = 0.5,
            max_time_s: float = 10.0, warmup_s: float = 0.05, one_shot: bool = False) -> Stats:
    """Time ``fn()``: ``warmup`` untimed calls (and at least ``warmup_s`` of them), then at least ``min_reps`` timed
    calls and until ``min_time_s`` has passed (at most ``max_reps`` calls or
    ``max_time_s``). Returns median and p20/p80 in milliseconds. ``one_shot``: when the first call
    alone exceeds ``max_time_s`` (a seconds-long eager baseline), it is the one timed call: for
    such calls the first-call overheads are noise, and a second call would double the run."""
    # Warm-up: the first call (compilation, allocation) always; then more calls
    # until ``warmup`` calls and ``warmup_s`` seconds have passed, while they fit
    # in half the time budget (slow baselines get one). The time floor matters for
    # microsecond calls: a few calls after a slow baseline (caches flushed, pool
    # threads asleep, clocks down) are not yet the steady state.
    t_w = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t_w
    if one_shot and first > max_time_s:
        return Stats(first * 1e3, first * 1e3, first * 1e3, 1)
    n = 1
    while n < warmup or time.perf_counter() - t_w < warmup_s:
        if time.perf_counter() - t_w + first > max_time_s / 2:
            break
        fn()
        _sync(device)
        n += 1
    times = []
    t_start = time.perf_counter()
    while True:
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - t_start
        if len(times) >= max_reps or elapsed > max_time_s:
            break
        if len(times) >= min_reps and elapsed >= min_time_s:
            break
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return Stats(statistics.median(times), q[0], q[3], len(times))


ROUNDS = 3      # timing windows per fast callable (the best one is kept)
FAST_S = 0.05   # a callable whose first call takes less is "fast"


def copy_bandwidth(device: str = "cpu", nbytes: int = 512 << 20, windows: int = ROUNDS) -> float:
    """GB/s of ``dst.copy_(src)`` on a buffer far larger than the caches,
    counting bytes read plus bytes written: the best of ``windows`` windows
    (the median of each), 0.5 s apart."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    best = None
    for w in range(windows):
        if w:
            time.sleep(0.5)
        st = measure(lambda: dst.copy_(src), device=device, warmup=2, min_reps=5, min_time_s=0.5)
        best = st.median_ms if best is None else min(best, st.median_ms)
    return 2 * nbytes / (best * 1e-3) / 1e9


@dataclasses.dataclass
class Case:
    """One benchmark row.

    op: op family ("philox_uniform", "soft_mixture", ...); label: the shape/
    variant; fns: name -> zero-argument callable, the first being softdec's
    kernel (``primary``); bytes: bytes the kernel must move (the byte floor);
    memory_bound: whether the floor fraction is a target for this row.
    """
    op: str
    label: str
    fns: dict
    bytes: int = 0
    primary: str = "softdec"
    memory_bound: bool = True
    device: str = "cpu"
    notes: str = ""
    budget_s: Optional[float] = None  # per-callable timing budget overriding the runner's
    compile_capped: bool = False  # the compile baseline deliberately left out in this run size


def _fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def run_cases(cases: list, *, bandwidth_gbs: float, progress: bool = True,
              budget_s: float = 5.0, skip: tuple = (), rounds: int = ROUNDS,
              t0: Optional[float] = None, on_row: Optional[Callable[[list], None]] = None) -> list:
    """Time every case; print one table row per case (stdout) as it completes, and one
    progress line per finished row on stderr with the elapsed time since ``t0``. Fast
    callables get ``rounds`` windows, interleaved, and keep their best median. ``on_row(rows)``
    is called after each finished row (the runner rewrites its JSON, so a run stopped by a
    time limit keeps the rows it finished)."""
    rows = []
    total = len(cases)
    t0 = time.perf_counter() if t0 is None else t0
    live = progress and sys.stderr.isatty()
    for i, c in enumerate(cases):
        t_row = time.perf_counter()
        res = {}
        fast = set()
        for rnd in range(rounds):
            for name, fn in c.fns.items():
                if name in skip or (rnd > 0 and name not in fast):
                    continue
                if live:
                    print(f"  [{i + 1}/{total} {time.perf_counter() - t0:6.0f}s] {c.op} {c.label}: {name}"
                          f" (window {rnd + 1}) ...", end="\r", file=sys.stderr, flush=True)
                try:
                    t_first = time.perf_counter()
                    # compile's first call is the compilation: never the timed one
                    st = measure(fn, device=c.device, max_time_s=c.budget_s or budget_s,
                                 one_shot=name != "compile")
                    if rnd == 0 and (time.perf_counter() - t_first) / max(st.reps, 1) < FAST_S:
                        fast.add(name)
                    prev = res.get(name)
                    if not isinstance(prev, Stats) or st.median_ms < prev.median_ms:
                        res[name] = st
                except Exception as e:  # a baseline that fails (e.g. compile) is reported, not fatal
                    res[name] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                    fast.discard(name)
        prim = res.get(c.primary)
        row = {"op": c.op, "label": c.label, "device": c.device, "bytes": c.bytes,
               "memory_bound": c.memory_bound, "notes": c.notes, "times": {}}
        for name, st in res.items():
            row["times"][name] = st.as_dict() if isinstance(st, Stats) else st
        if isinstance(prim, Stats):
            row["ratios"] = {name: st.median_ms / prim.median_ms
                             for name, st in res.items() if isinstance(st, Stats) and name != c.primary}
            if c.bytes:
                floor_ms = c.bytes / (bandwidth_gbs * 1e9) * 1e3
                row["floor_ms"] = floor_ms
                row["gbs"] = c.bytes / (prim.median_ms * 1e-3) / 1e9
                row["floor_fraction"] = floor_ms / prim.median_ms  # 1.0 = at the byte floor
        rows.append(row)
        row["seconds"] = time.perf_counter() - t_row
        if progress:
            if live:
                print(" " * 100, end="\r", file=sys.stderr)
            print(f"  [{i + 1}/{total} {time.perf_counter() - t0:6.1f}s] {c.op} {c.label}: done in "
                  f"{row['seconds']:.1f}s", file=sys.stderr, flush=True)
            print(format_row(row), flush=True)
        if on_row is not None:
            on_row(rows)
    return rows


OTHER_W = 40  # the "other" column: the extra baselines (dense, flashinfer, flashinfer_probs, fi_dense, ...)
HEADER = (f"{'op':<22} {'case':<40} {'softdec ms (p20-p80)':>22} {'eager ms':>9} {'x eager':>8} "
          f"{'compile ms':>10} {'x compile':>9} {'other':>{OTHER_W}} {'GB/s':>7} {'floor':>6}")


def format_row(row: dict) -> str:
    t = row["times"]
    prim = t.get("softdec")
    if isinstance(prim, dict):
        ps = f"{_fmt_ms(prim['median_ms'])} ({_fmt_ms(prim['p20_ms'])}-{_fmt_ms(prim['p80_ms'])})"
    else:
        ps = str(prim)[:22]
    r = row.get("ratios", {})

    def ms(name):
        v = t.get(name)
        return _fmt_ms(v["median_ms"]) if isinstance(v, dict) else ("err" if v else "-")

    def ratio(name):
        return f"{r[name]:.1f}x" if name in r else "-"

    others = [n for n in t if n not in ("softdec", "eager", "compile")]
    other = " ".join(f"{n}:{r[n]:.1f}x" for n in others if n in r)[:OTHER_W] or "-"
    gbs = f"{row['gbs']:.1f}" if "gbs" in row else "-"
    fl = f"{row['floor_fraction']:.2f}" if "floor_fraction" in row and row.get("memory_bound") else "-"
    return (f"{row['op']:<22} {row['label']:<40} {ps:>22} {ms('eager'):>9} {ratio('eager'):>8} "
            f"{ms('compile'):>10} {ratio('compile'):>9} {other:>{OTHER_W}} {gbs:>7} {fl:>6}")


def environment() -> dict:
    """Machine, commit and versions for the JSON record."""
    import softdec
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    env = {"machine": platform.node(), "platform": platform.platform(), "commit": commit,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "softdec": softdec.info()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_json(path: str, env: dict, bandwidth: dict, rows: list) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": env, "bandwidth_gbs": bandwidth, "rows": rows}, f, indent=1)


def plot(rows: list, path: str) -> Optional[str]:
    """Bar chart of softdec's speedup over each baseline, one bar group per row."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get("ratios")]
    if not rows:
        return None
    names = sorted({n for r in rows for n in r["ratios"]})
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(rows) * len(names)), 5))
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        xs = [i + j * width for i in range(len(rows))]
        ys = [r["ratios"].get(n, 0) for r in rows]
        ax.bar(xs, ys, width, label=f"vs {n}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup of softdec (x, log scale)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['op']}\n{r['label']}" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
