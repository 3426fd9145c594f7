"""Execute every notebook and render it to HTML under build/, for reading without running.

    python tools/render.py                 # default settings (what a student runs)
    python tools/render.py --quick         # QUICK settings, in a few minutes
    python tools/render.py 01 06           # only notebooks whose name starts with 01 or 06
    python tools/render.py --clear         # strip outputs from notebooks/ (before committing)

Cells run with the sliced kernel poll and a time limit of tools/nbexec.py (a cell that really
hangs fails with a message). Each run prints the notebook's wall time and its kernel's peak resident memory (Binder gives a
kernel 2 GB).

Executed notebooks and their HTML go to build/ (ignored by git); the sources stay clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbexec  # noqa: E402  (beside this file)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def clear_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


# Appended to the executed copy only, then removed again: the kernel's peak resident memory.
_PEAK_MEMORY_CELL = """
import resource, sys
_scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kilobytes on Linux
print("peak kernel memory (MB):", max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * _scale / 2**20)
"""


def render(path: Path, out_dir: Path, quick: bool) -> tuple[float, float | None]:
    """Execute ``path`` into ``out_dir`` and write its HTML; return (seconds, peak kernel MB)."""
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_code_cell

    executed = out_dir / path.name
    source = nbformat.read(path, as_version=4)
    measure = sys.platform != "win32"  # the resource module is POSIX only
    if measure:
        source.cells.append(new_code_cell(_PEAK_MEMORY_CELL.strip()))
    staged = out_dir / f".{path.stem}.input.ipynb"
    nbformat.write(source, staged)
    start = time.perf_counter()
    try:
        nbexec.execute_notebook(
            str(staged),
            str(executed),
            parameters={"QUICK": quick},
            cwd=str(NOTEBOOKS),
            kernel_name="python3",
        )
    finally:
        staged.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    nb = nbformat.read(executed, as_version=4)
    peak = None
    if measure:
        last = nb.cells.pop()
        text = "".join(o.get("text", "") for o in last.get("outputs", []))
        peak = float(text.rsplit(":", 1)[1]) if "peak kernel memory" in text else None
        nbformat.write(nb, executed)
    body, _ = HTMLExporter().from_notebook_node(nb)
    executed.with_suffix(".html").write_text(body, encoding="utf-8")
    return seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "prefixes", nargs="*", help="only notebooks whose file name starts with one of these"
    )
    parser.add_argument("--quick", action="store_true", help="run with QUICK=True")
    parser.add_argument(
        "--clear",
        action="store_true",
        help="strip outputs from the notebooks in notebooks/ and exit",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "build"), help="output folder (default: build/)"
    )
    args = parser.parse_args(argv)
    paths = [
        p
        for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
        if not args.prefixes or p.name.startswith(tuple(args.prefixes))
    ]
    if not paths:
        print(f"no notebook in {NOTEBOOKS} matches {args.prefixes}", file=sys.stderr)
        return 1
    if args.clear:
        for path in paths:
            clear_outputs(path)
            print(f"cleared {path.name}")
        return 0
    out_dir = Path(args.out) / ("quick" if args.quick else "full")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        seconds, peak = render(path, out_dir, args.quick)
        memory = "" if peak is None else f", peak kernel memory {peak:,.0f} MB"
        print(
            f"{path.name}: {seconds:.0f} s{memory} -> {out_dir / path.with_suffix('.html').name}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
