"""Every notebook at default settings, on an idle machine and beside one CPU-bound process.

Issue 14's target: on the 2-core machine a notebook at default settings finishes, beside one
other CPU-bound process, within 1.5 times its idle time. This renders each notebook with
``tools/render.py`` (so every claim the notebook makes is checked at full settings) and prints
its wall time::

    python benchmarks/bench_notebooks.py --load none          # idle machine: run nothing else
    python benchmarks/bench_notebooks.py --load spin          # beside one CPU-bound Python process
    python benchmarks/bench_notebooks.py --load none 02 09    # only some notebooks
    python benchmarks/bench_notebooks.py --load external      # something else already loads the
                                                              # machine (say a training run)

Each result is appended to ``benchmarks/results/notebooks.jsonl`` (committed: the evidence behind
the README's times) with the load, the load averages before and after, the CPUs and the date;
``--compare`` prints, per notebook, the newest idle and loaded times and their ratio against the
1.5 target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import render  # noqa: E402  (tools/render.py)

from helpers.device import available_cpus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "notebooks.jsonl"
TARGET = 1.5


def _spin(stop) -> None:  # one CPU-bound neighbour, like a second program on a laptop
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(prefixes: list[str], load: str, out_dir: Path) -> list[dict]:
    paths = [
        p
        for p in sorted(render.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
        if not prefixes or p.name.startswith(tuple(prefixes))
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        stop = multiprocessing.Event()
        neighbour = None
        if load == "spin":
            neighbour = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
            neighbour.start()
        before = _load_average()
        try:
            seconds, peak = render.render(path, out_dir, quick=False)
        finally:
            if neighbour is not None:
                stop.set()
                neighbour.join(5)
        row = {
            "notebook": path.stem,
            "load": load,
            "seconds": round(seconds, 1),
            "peak_mb": None if peak is None else round(peak),
            "load_average_before": before,
            "load_average_after": _load_average(),
            "cpus": available_cpus(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{path.stem}: {seconds / 60:.1f} min ({load}), peak {row['peak_mb']} MB, "
            f"load average {before} -> {row['load_average_after']}",
            flush=True,
        )
        rows.append(row)
    return rows


def compare() -> int:
    if not RESULTS.exists():
        print(f"no results yet in {RESULTS}: run with --load none and --load spin first")
        return 1
    newest: dict[tuple[str, str], dict] = {}
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        # idle is the newest run with nothing else running; loaded the newest beside a CPU-bound
        # process, whether this script started it (spin) or another job was running (external)
        newest[row["notebook"], "none" if row["load"] == "none" else "loaded"] = row
    names = sorted({name for name, _ in newest})
    print("| notebook | idle (min) | beside one CPU-bound process (min) | ratio |")
    print("|---|---|---|---|")
    failed = 0
    for name in names:
        idle = newest.get((name, "none"))
        loaded = newest.get((name, "loaded"))
        ratio = loaded["seconds"] / idle["seconds"] if idle and loaded else None
        failed += ratio is not None and ratio > TARGET
        show = lambda row: "-" if row is None else f"{row['seconds'] / 60:.1f}"  # noqa: E731
        mark = "-" if ratio is None else f"{ratio:.2f}" + (" (over 1.5)" if ratio > TARGET else "")
        print(f"| {name} | {show(idle)} | {show(loaded)} | {mark} |")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose name starts with these")
    parser.add_argument(
        "--load",
        choices=("none", "spin", "external"),
        default="none",
        help="none: idle machine; spin: start one CPU-bound process; external: another job "
        "already loads the machine",
    )
    parser.add_argument(
        "--compare", action="store_true", help="print the newest idle and loaded times"
    )
    parser.add_argument("--out", default=str(ROOT / "build" / "bench"), help="executed notebooks")
    args = parser.parse_args(argv)
    if args.compare:
        return compare()
    run(args.prefixes, args.load, Path(args.out))
    return compare()


if __name__ == "__main__":
    raise SystemExit(main())
