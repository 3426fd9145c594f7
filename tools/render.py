"""Execute every notebook and render it to HTML under build/, for reading without running.

    python tools/render.py                 # default settings (what a student runs)
    python tools/render.py --quick         # QUICK settings, in a few minutes
    python tools/render.py 01 06           # only notebooks whose name starts with 01 or 06
    python tools/render.py --clear         # strip outputs from notebooks/ (before committing)

Executed notebooks and their HTML go to build/ (ignored by git); the sources stay clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def clear_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


def render(path: Path, out_dir: Path, quick: bool) -> float:
    import papermill
    from nbconvert import HTMLExporter

    executed = out_dir / path.name
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(executed), parameters={"QUICK": quick}, cwd=str(NOTEBOOKS), kernel_name="python3")
    seconds = time.perf_counter() - start
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    executed.with_suffix(".html").write_text(body, encoding="utf-8")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose file name starts with one of these")
    parser.add_argument("--quick", action="store_true", help="run with QUICK=True")
    parser.add_argument("--clear", action="store_true", help="strip outputs from the notebooks in notebooks/ and exit")
    parser.add_argument("--out", default=str(ROOT / "build"), help="output folder (default: build/)")
    args = parser.parse_args(argv)
    paths = [p for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) if not args.prefixes or p.name.startswith(tuple(args.prefixes))]
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
        seconds = render(path, out_dir, args.quick)
        print(f"{path.name}: {seconds:.0f} s -> {out_dir / path.with_suffix('.html').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
