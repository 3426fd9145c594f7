"""Instructor edition, student edition and autograding of the course notebooks, with nbgrader.

The notebooks in notebooks/ are the instructor edition. Every exercise in them is a pair of
cells: a solution cell (nbgrader "solution", its answer between `### BEGIN SOLUTION` and
`### END SOLUTION`) and, right after it, a locked, graded check cell (nbgrader "grade", one
point per `exercises.check_*` call), part of whose checks may sit between
`### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`. From them:

    python tools/assignments.py release                # student edition of every notebook
    python tools/assignments.py release 01 06          # ... of notebooks 01 and 06 only
    python tools/assignments.py release --out DIR      # into DIR instead of build/student/

writes build/student/<notebook>.ipynb: each solution replaced by a line raising
NotImplementedError that names the exercise, hidden checks removed, no outputs. Students work
in the notebooks/ folder of their copy of the course (the notebooks import `helpers`).

    python tools/assignments.py grade SUBMISSIONS          # autograde every submission
    python tools/assignments.py grade SUBMISSIONS --quick  # with QUICK = True: seconds each
    python tools/assignments.py grade SUBMISSIONS --csv scores.csv --keep grading/

grades SUBMISSIONS/<student>/<notebook>.ipynb (one folder per student, named after the
student; the notebooks keep their file names, e.g. alice/01_meta_learning_and_episodes.ipynb;
a student may hand in only some notebooks). nbgrader restores every check cell, hidden checks
included, from notebooks/, runs the notebook and gives a check cell its points when it raises
nothing. The score table is printed per student and exercise, with totals; --csv also writes
one row per student, notebook and exercise; --keep keeps nbgrader's course folder (the
executed notebooks are under autograded/<student>/<notebook>/, the gradebook is gradebook.db).
--quick sets QUICK = True in the parameters cell of the submitted copies (for trying the
pipeline; grade real work without it, at the notebooks' full settings).

    python tools/assignments.py metadata               # write the nbgrader metadata
    python tools/assignments.py metadata --check       # only check it (the tests do this)

To add an exercise: a markdown cell with **Exercise N** in it, a code cell with the solution
between the solution markers, a code cell right after it with the checks (answers that a
visible check would give away go between the hidden-test markers; end the cell with `;` or an
assignment, since nbgrader takes a printed value as a partial grade), then run `metadata`.
Never mention the markers in a markdown cell: nbgrader would see a region there.
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
DEFAULT_OUT = ROOT / "build" / "student"

# nbgrader looks for these words anywhere in a line of any cell, markdown included
SOLUTION_WORDS = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN_WORDS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
CHECK_CALL = re.compile(r"\bcheck_(?:true|close|equal|shape)\s*\(")
EXERCISE_HEADING = re.compile(r"(?:\*\*|^#+[ \t]+)Exercise[ \t]+(\d+)", re.MULTILINE)
STUB_NAME = "{exercise}"
STUB = f'raise NotImplementedError("{STUB_NAME}: replace this line with your solution")'
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
NBGRADER_PIN = "nbgrader==0.9.6"


class UsageError(Exception):
    """Bad input: main() prints the message as one line and exits with status 1."""


# --------------------------------------------------------------------------- notebook files


def course_notebooks(prefixes: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """notebooks/NN_*.ipynb, or those whose name starts with one of ``prefixes``."""
    paths = sorted(NOTEBOOKS.glob(NOTEBOOK_GLOB))
    chosen = [p for p in paths if not prefixes or p.name.startswith(tuple(prefixes))]
    if not chosen:
        raise UsageError(
            f"no notebook in {NOTEBOOKS} matches {' '.join(prefixes) or NOTEBOOK_GLOB}"
        )
    return chosen


def read_notebook(path: Path) -> dict:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path} is not a readable notebook ({type(error).__name__})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise UsageError(f"{path} is not a Jupyter notebook (no list of cells)")
    return nb


def write_notebook(path: Path, nb: dict) -> None:
    """Write as the committed notebooks are written: one-space indent, UTF-8, final newline."""
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def set_cell_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def notebook_label(path: Path | str) -> str:
    """'01' for 01_meta_learning_and_episodes.ipynb: how the stubs name the notebook."""
    return Path(path).name.split("_", 1)[0]


# --------------------------------------------------------------------------- the exercises


@dataclass(frozen=True)
class Exercise:
    """One exercise: its solution cell, the check cell right after it and the points."""

    number: int
    solution: int  # index of the solution cell
    check: int  # index of the check cell
    points: int  # one per check call, hidden ones included

    @property
    def name(self) -> str:
        return f"ex{self.number}"

    @property
    def solution_id(self) -> str:
        return f"ex{self.number}_solution"

    @property
    def check_id(self) -> str:
        return f"ex{self.number}_check"

    def solution_metadata(self) -> dict:
        return {
            "grade": False,
            "grade_id": self.solution_id,
            "locked": False,
            "schema_version": 3,
            "solution": True,
            "task": False,
        }

    def check_metadata(self) -> dict:
        return {
            "grade": True,
            "grade_id": self.check_id,
            "locked": True,
            "points": self.points,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }


def _has_any(text: str, words: tuple[str, ...]) -> bool:
    return any(word in text for word in words)


def _cell_name(cells: list[dict], index: int) -> str:
    return f"cell {index} ({cells[index].get('id', 'no id')})"


def find_exercises(nb: dict) -> tuple[list[Exercise], list[str]]:
    """The exercises of a notebook and the problems that stop a cell from being one."""
    cells = nb["cells"]
    exercises: list[Exercise] = []
    problems: list[str] = []
    previous_check = -1
    for index, cell in enumerate(cells):
        text = cell_source(cell)
        if not _has_any(text, SOLUTION_WORDS):
            continue
        where = _cell_name(cells, index)
        if cell.get("cell_type") != "code":
            problems.append(
                f"{where}: a {cell.get('cell_type')} cell mentions the solution markers, which "
                "nbgrader takes for a solution region; describe them in other words"
            )
            continue
        number = None
        for back in range(index - 1, previous_check, -1):
            if cells[back].get("cell_type") == "markdown":
                found = EXERCISE_HEADING.findall(cell_source(cells[back]))
                if found:
                    number = int(found[-1])
                    break
        if number is None:
            problems.append(
                f"{where}: no markdown cell with **Exercise N** between the previous exercise "
                "and this solution cell"
            )
            continue
        if any(ex.number == number for ex in exercises):
            problems.append(f"{where}: a second solution cell for exercise {number}")
            continue
        check = index + 1
        if (
            check >= len(cells)
            or cells[check].get("cell_type") != "code"
            or not CHECK_CALL.search(cell_source(cells[check]))
        ):
            problems.append(
                f"{where}: exercise {number} needs a code cell calling exercises.check_* "
                "right after its solution cell"
            )
            continue
        points = len(CHECK_CALL.findall(cell_source(cells[check])))
        exercises.append(Exercise(number, index, check, points))
        previous_check = check
    return exercises, problems


def expected_metadata(exercises: list[Exercise]) -> dict[int, dict]:
    wanted: dict[int, dict] = {}
    for ex in exercises:
        wanted[ex.solution] = ex.solution_metadata()
        wanted[ex.check] = ex.check_metadata()
    return wanted


def write_metadata(path: Path) -> bool:
    """Give the exercise cells of ``path`` their nbgrader metadata (and no other cell any).

    Reads the file, changes only the ``nbgrader`` entry of cell metadata, and writes it back
    at once when something changed. Returns whether it did.
    """
    nb = read_notebook(path)
    exercises, problems = find_exercises(nb)
    if problems:
        raise UsageError(f"{path.name}: {problems[0]}")
    wanted = expected_metadata(exercises)
    changed = False
    for index, cell in enumerate(nb["cells"]):
        metadata = cell.setdefault("metadata", {})
        want = wanted.get(index)
        if want is None and "nbgrader" in metadata:
            del metadata["nbgrader"]
            changed = True
        elif want is not None and metadata.get("nbgrader") != want:
            metadata["nbgrader"] = want
            changed = True
    if changed:
        write_notebook(path, nb)
    return changed


def _region_lines(text: str, begin: str, end: str) -> tuple[list[str], list[str], bool]:
    """(lines outside the regions, lines inside them, whether the markers pair up)."""
    outside, inside, depth, balanced = [], [], 0, True
    for line in text.split("\n"):
        if begin in line:
            balanced &= depth == 0
            depth = 1
        elif end in line:
            balanced &= depth == 1
            depth = 0
        else:
            (inside if depth else outside).append(line)
    return outside, inside, balanced and depth == 0


def without_hidden_tests(text: str) -> str:
    return "\n".join(_region_lines(text, *HIDDEN_WORDS)[0])


def solution_lines(text: str) -> list[str]:
    """The lines between the solution markers of a cell."""
    return _region_lines(text, *SOLUTION_WORDS)[1]


def hidden_lines(text: str) -> list[str]:
    """The lines between the hidden-test markers of a cell."""
    return _region_lines(text, *HIDDEN_WORDS)[1]


def public_lines(text: str) -> list[str]:
    """The lines outside every solution and hidden-test region: what both editions show."""
    outside = "\n".join(_region_lines(text, *SOLUTION_WORDS)[0])
    return without_hidden_tests(outside).split("\n")


def _ends_with_a_value(text: str) -> bool:
    """Whether the cell's last statement is an expression IPython would display.

    nbgrader reads a displayed value of a graded cell as its partial grade, so a check cell
    must end with ``;``, an assignment or a ``print``.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    last = tree.body[-1].value
    if isinstance(last, ast.Call) and getattr(last.func, "id", None) == "print":
        return False
    code_lines = [
        line for line in text.split("\n") if line.strip() and not line.strip().startswith("#")
    ]
    return not code_lines[-1].rstrip().endswith(";")


def check_notebook(path: Path) -> list[str]:
    """Everything that would stop ``path`` from being a valid nbgrader source notebook."""
    nb = read_notebook(path)
    cells = nb["cells"]
    exercises, problems = find_exercises(nb)
    problems = [f"{path.name}: {p}" for p in problems]
    if not exercises and not problems:
        problems.append(f"{path.name}: no exercise (a solution cell followed by a check cell)")
    wanted = expected_metadata(exercises)
    solution_cells = {ex.solution for ex in exercises}
    check_cells = {ex.check for ex in exercises}
    for index, cell in enumerate(cells):
        where = f"{path.name}: {_cell_name(cells, index)}"
        text = cell_source(cell)
        have = cell.get("metadata", {}).get("nbgrader")
        if have != wanted.get(index):
            problems.append(
                f"{where}: nbgrader metadata {have} should be {wanted.get(index)} "
                "(python tools/assignments.py metadata writes it)"
            )
        if index in solution_cells:
            inside = solution_lines(text)
            balanced = _region_lines(text, *SOLUTION_WORDS)[2]
            if not balanced or not any(line.strip() for line in inside):
                problems.append(
                    f"{where}: solution markers must pair up around a non-empty solution"
                )
        if _has_any(text, HIDDEN_WORDS) and index not in check_cells:
            problems.append(f"{where}: hidden-test markers outside a check cell")
        if CHECK_CALL.search(text) and index not in check_cells and cell.get("cell_type") == "code":
            problems.append(f"{where}: calls a check but is not the check cell of an exercise")
        if index in check_cells:
            if _has_any(text, SOLUTION_WORDS):
                problems.append(f"{where}: solution markers in a check cell")
            if not _region_lines(text, *HIDDEN_WORDS)[2]:
                problems.append(f"{where}: hidden-test markers do not pair up")
            visible = without_hidden_tests(text)
            if not CHECK_CALL.search(visible):
                problems.append(f"{where}: every check is hidden; keep one visible for the student")
            for edition, body in (("instructor", text), ("student", visible)):
                if _ends_with_a_value(body):
                    problems.append(
                        f"{where}: in the {edition} edition the cell ends with a value, which "
                        "nbgrader takes for a partial grade; end it with ; or assign it to _"
                    )
    problems += _nbgrader_schema_problems(path, nb)
    return problems


def _nbgrader_schema_problems(path: Path, nb: dict) -> list[str]:
    try:
        import nbformat
        from nbgrader.nbgraderformat import MetadataValidator, ValidationError
    except ImportError:  # the checks above already cover what the schema says
        return []
    try:
        MetadataValidator().validate_nb(nbformat.from_dict(nb))
    except ValidationError as error:
        return [f"{path.name}: nbgrader rejects the metadata: {str(error).splitlines()[0]}"]
    return []


# --------------------------------------------------------------------------- student edition


def _exercise_title(solution_id: str, label: str) -> str:
    match = re.fullmatch(r"ex(\d+)_solution", solution_id)
    what = f"Exercise {match.group(1)}" if match else solution_id
    return f"{what} of notebook {label}"


def _replace_regions(text: str, begin: str, end: str, stub: str | None) -> str:
    """Replace each marked region by ``stub`` (indented like its first marker), or drop it."""
    lines, inside = [], False
    for line in text.split("\n"):
        if begin in line:
            if stub is not None:
                lines.append(re.match(r"\s*", line).group(0) + stub)
            inside = True
        elif end in line:
            inside = False
        elif not inside:
            lines.append(line)
    return "\n".join(lines)


def student_edition(nb: dict, label: str) -> dict:
    """The student edition of an instructor notebook, made without nbgrader.

    The same transformation as ``nbgrader generate_assignment`` with this tool's stub:
    solution regions become a ``raise NotImplementedError(...)`` naming the exercise, hidden
    tests are removed, outputs cleared and locked cells marked read-only.
    """
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        text = cell_source(cell)
        if meta.get("solution"):
            stub = STUB.replace(STUB_NAME, _exercise_title(meta["grade_id"], label))
            set_cell_source(cell, _replace_regions(text, *SOLUTION_WORDS, stub))
        elif meta.get("grade"):
            set_cell_source(cell, _replace_regions(text, *HIDDEN_WORDS, None))
        if meta.get("solution") or meta.get("grade") or meta.get("locked"):
            cell["metadata"]["deletable"] = False  # as nbgrader's LockCells does
        if meta.get("locked") and not meta.get("solution"):
            cell["metadata"]["editable"] = False
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def nbgrader_available() -> bool:
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        return False
    return True


def release(paths: list[Path], out: Path, use_nbgrader: bool | None = None) -> list[Path]:
    """Write the student edition of each notebook in ``paths`` to ``out``; return the files.

    With nbgrader (the default when it is installed) each notebook goes through
    ``generate_assignment`` in a temporary course folder; without it, :func:`student_edition`
    does the same.
    """
    problems = [problem for path in paths for problem in check_notebook(path)]
    if problems:
        raise UsageError(
            f"{len(problems)} problem(s) in the exercise cells; the first: {problems[0]}"
        )
    use_nbgrader = nbgrader_available() if use_nbgrader is None else use_nbgrader
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if use_nbgrader:
        with tempfile.TemporaryDirectory(prefix="nbgrader-release-") as tmp:
            course = NbgraderCourse(Path(tmp))
            for path in paths:
                released = course.generate(path)
                nb = read_notebook(released)
                _name_the_stubs(nb, notebook_label(path))
                write_notebook(out / path.name, nb)
                written.append(out / path.name)
    else:
        for path in paths:
            write_notebook(
                out / path.name, student_edition(read_notebook(path), notebook_label(path))
            )
            written.append(out / path.name)
    return written


def _name_the_stubs(nb: dict, label: str) -> None:
    """Put the exercise's name into nbgrader's (constant) stub, and refresh the checksum."""
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and STUB_NAME in cell_source(cell):
            title = _exercise_title(meta["grade_id"], label)
            set_cell_source(cell, cell_source(cell).replace(STUB_NAME, title))
            if "checksum" in meta:
                import nbformat
                from nbgrader.utils import compute_checksum

                meta["checksum"] = compute_checksum(
                    nbformat.from_dict({**cell, "source": cell_source(cell)})
                )


# --------------------------------------------------------------------------- nbgrader


class _Collect(logging.Handler):
    """Keeps nbgrader's error messages, to report the cause in one line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def reason(self) -> str:
        for message in reversed(self.messages):  # the exception line of the last traceback
            if message.startswith("Traceback"):
                return message.strip().splitlines()[-1]
        return self.messages[0].strip().splitlines()[0] if self.messages else "unknown error"


def _put_this_python_on_path() -> None:
    """nbgrader runs the ``alembic`` command; find it beside this interpreter (a venv's bin/)."""
    if shutil.which("alembic") is None:
        bin_dir = str(Path(sys.executable).parent)
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


class NbgraderCourse:
    """A throw-away nbgrader course folder: source/<stem>/<stem>.ipynb, one assignment per notebook."""

    def __init__(self, root: Path, timeout: int | None = 600, execute: bool = True) -> None:
        if not nbgrader_available():
            raise UsageError(f"nbgrader is not installed: pip install {NBGRADER_PIN}")
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config import Config

        _put_this_python_on_path()
        self.root = root
        self.config = Config()
        self.config.CourseDirectory.root = str(root)
        self.config.ClearSolutions.code_stub = {"python": STUB}
        self.config.Execute.timeout = timeout
        if not execute:
            self._grade_existing_outputs()
        self.coursedir = CourseDirectory(config=self.config)

    def _grade_existing_outputs(self) -> None:
        """Grade the outputs a notebook already has instead of running it (for the tests).

        Only for notebooks executed by a trusted run (the test suite's papermill run of the
        instructor edition): outputs in a student's file could be forged.
        """
        from nbconvert.preprocessors import ClearMetadataPreprocessor
        from nbgrader.preprocessors import (
            AssignLatePenalties,
            CheckCellMetadata,
            DeduplicateIds,
            LimitOutput,
            OverwriteCells,
            OverwriteKernelspec,
            SaveAutoGrades,
        )

        self.config.Autograde.sanitize_preprocessors = [
            DeduplicateIds,
            OverwriteKernelspec,
            OverwriteCells,
            CheckCellMetadata,
        ]
        self.config.Autograde.autograde_preprocessors = [
            ClearMetadataPreprocessor,
            LimitOutput,
            SaveAutoGrades,
            AssignLatePenalties,
            CheckCellMetadata,
        ]

    def _run(self, converter_class, assignment: str, student: str = ".") -> None:
        """Run one nbgrader converter quietly; its error, if any, becomes one line."""
        import logging

        from nbgrader.converters.base import NbGraderException

        self.coursedir.assignment_id = assignment
        self.coursedir.student_id = student
        converter = converter_class(coursedir=self.coursedir, config=self.config)
        converter.force = True
        errors = _Collect()
        logger = converter.log
        saved = logger.handlers[:], logger.level, logger.propagate
        logger.handlers, logger.propagate = [errors], False
        logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SQLAlchemy 2's notes about nbgrader's sessions
                converter.start()
        except NbGraderException:
            raise UsageError(f"nbgrader failed on {assignment}: {errors.reason()}") from None
        finally:
            logger.handlers, logger.level, logger.propagate = saved

    def generate(self, path: Path) -> Path:
        """Add ``path`` as an assignment, run generate_assignment, return the released file."""
        from nbgrader.converters import GenerateAssignment

        stem = path.stem
        source = self.root / "source" / stem
        source.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, source / path.name)
        self._run(GenerateAssignment, stem)
        return self.root / "release" / stem / path.name

    def submit(self, student: str, stem: str, nb: dict) -> None:
        folder = self.root / "submitted" / student / stem
        folder.mkdir(parents=True, exist_ok=True)
        write_notebook(folder / f"{stem}.ipynb", nb)

    def autograde(self, student: str, stem: str) -> None:
        from nbgrader.converters import Autograde

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import nbexec  # beside this file: kernel waits that survive a lost zmq wake-up

        nbexec.install_poll_slices()
        self._run(Autograde, stem, student)

    def scores(self, student: str, stem: str) -> dict[str, tuple[float, float]]:
        """{check cell's grade_id: (score, max score)} of one autograded submission."""
        from nbgrader.api import Gradebook

        with warnings.catch_warnings(), Gradebook(self.coursedir.db_url) as gradebook:
            warnings.simplefilter("ignore")
            notebook = gradebook.find_submission_notebook(stem, stem, student)
            return {
                grade.name: (float(grade.score or 0.0), float(grade.max_score))
                for grade in notebook.grades
            }

    def autograded(self, student: str, stem: str) -> Path:
        return self.root / "autograded" / student / stem / f"{stem}.ipynb"


# --------------------------------------------------------------------------- grading


@dataclass
class GradeReport:
    """Scores of every submission and the points each exercise is worth."""

    exercises: dict[str, dict[str, float]] = field(default_factory=dict)  # stem -> {ex: points}
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # (student, stem)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (student, stem) -> why
    students: list[str] = field(default_factory=list)
    course_dir: Path | None = None
    seconds: float = 0.0

    @property
    def notebooks(self) -> list[str]:
        return sorted(self.exercises)

    def total(self, student: str, stem: str | None = None) -> tuple[float, float]:
        """(points scored, points possible) in one notebook, or in every notebook graded."""
        stems = [stem] if stem else self.notebooks
        got = sum(sum(self.scores.get((student, s), {}).values()) for s in stems)
        return got, sum(sum(self.exercises[s].values()) for s in stems)

    def table(self) -> str:
        return format_table(self)


def read_submissions(folder: Path, quick: bool) -> dict[tuple[str, str], dict]:
    """{(student, notebook stem): notebook} from ``folder/<student>/<notebook>.ipynb``."""
    if not folder.exists():
        raise UsageError(f"{folder} does not exist: give the folder holding one folder per student")
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file: give the folder holding one folder per student")
    known = {path.name: path.stem for path in sorted(NOTEBOOKS.glob(NOTEBOOK_GLOB))}
    loose = sorted(p.name for p in folder.glob("*.ipynb"))
    if loose:
        raise UsageError(
            f"{folder / loose[0]} lies directly in {folder}: put each student's notebooks in a "
            f"folder named after the student, e.g. {folder}/alice/{loose[0]}"
        )
    submissions = {}
    students = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for student_dir in students:
        student = student_dir.name
        if not STUDENT_ID.match(student):
            raise UsageError(
                f"{student_dir}: a student folder's name may hold only letters, digits and _ . @ -"
            )
        files = sorted(p for p in student_dir.glob("*.ipynb") if not p.name.startswith("."))
        if not files:
            raise UsageError(f"{student_dir} holds no .ipynb file")
        for path in files:
            if path.name not in known:
                raise UsageError(
                    f"{path} is not one of the course notebooks ({', '.join(sorted(known))}); "
                    "keep the original file names"
                )
            nb = read_notebook(path)
            submissions[student, known[path.name]] = set_quick(nb) if quick else nb
    if not submissions:
        raise UsageError(
            f"{folder} holds no student folder with notebooks (<student>/<notebook>.ipynb)"
        )
    return submissions


def set_quick(nb: dict) -> dict:
    """A copy of ``nb`` whose parameters cell (tag ``parameters``) sets ``QUICK = True``."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            text = cell_source(cell)
            quick, count = re.subn(r"^QUICK\s*=\s*\w+", "QUICK = True", text, count=1, flags=re.M)
            set_cell_source(cell, quick if count else text.rstrip("\n") + "\nQUICK = True\n")
            return nb
    nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "quick-grading",
                           "metadata": {}, "outputs": [], "source": ["QUICK = True"]})  # fmt: skip
    return nb


def grade(
    submissions: Path,
    quick: bool = False,
    keep: Path | None = None,
    timeout: int | None = 600,
    execute: bool = True,
    progress: bool = True,
) -> GradeReport:
    """Autograde ``submissions/<student>/<notebook>.ipynb`` against the notebooks in notebooks/.

    ``execute=False`` grades the outputs already in the files instead of running them: only
    for notebooks a trusted run has executed (the test suite), never for students' files.
    """
    found = read_submissions(Path(submissions), quick)
    if keep is not None:
        keep = Path(keep)
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise UsageError(f"--keep {keep} must be a new or empty folder")
    start = time.perf_counter()
    sources = {path.stem: path for path in course_notebooks()}
    stems = sorted({stem for _, stem in found})
    problems = [p for stem in stems for p in check_notebook(sources[stem])]
    if problems:
        raise UsageError(
            f"{len(problems)} problem(s) in the exercise cells; the first: {problems[0]}"
        )
    report = GradeReport(students=sorted({student for student, _ in found}))
    for stem in stems:
        exercises, _ = find_exercises(read_notebook(sources[stem]))
        report.exercises[stem] = {ex.name: float(ex.points) for ex in exercises}
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="nbgrader-grade-")
    root = keep if keep else Path(tmp.name)
    try:
        course = NbgraderCourse(root, timeout=timeout, execute=execute)
        for stem in stems:
            course.generate(sources[stem])
        for (student, stem), nb in sorted(found.items()):
            course.submit(student, stem, nb)
        for student, stem in sorted(found):
            began = time.perf_counter()
            try:
                course.autograde(student, stem)
                graded = course.scores(student, stem)
                report.scores[student, stem] = {
                    _exercise_of(grade_id): score for grade_id, (score, _) in graded.items()
                }
            except UsageError as error:
                report.failures[student, stem] = str(error)
            if progress:
                seconds = time.perf_counter() - began
                print(f"graded {student} / {stem} in {seconds:.0f} s", file=sys.stderr)
        report.course_dir = root if keep else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    report.seconds = time.perf_counter() - start
    return report


def _exercise_of(grade_id: str) -> str:
    return grade_id.removesuffix("_check")


def _by_number(name: str) -> tuple[int, str]:
    match = re.match(r"ex(\d+)", name)
    return (int(match.group(1)) if match else 10**6, name)


def _points(value: float) -> str:
    return f"{value:g}"


def format_table(report: GradeReport) -> str:
    """One row per student and notebook, a column per exercise, then each student's total."""
    columns = sorted(
        {name for points in report.exercises.values() for name in points}, key=_by_number
    )
    rows = [["student", "notebook", *columns, "total"]]
    for student in report.students:
        for stem in report.notebooks:
            points = report.exercises[stem]
            scores = report.scores.get((student, stem))
            cells = []
            for name in columns:
                if name not in points:
                    cells.append("")
                else:
                    score = _points(scores[name]) if scores is not None else "-"
                    cells.append(f"{score}/{_points(points[name])}")
            got, best = report.total(student, stem)
            if (student, stem) in report.failures:
                total = f"0/{_points(best)} (failed)"
            elif scores is None:
                total = f"0/{_points(best)} (not handed in)"
            else:
                total = f"{_points(got)}/{_points(best)}"
            rows.append([student, stem, *cells, total])
        got, best = report.total(student)
        percent = 100 * got / best if best else 0.0
        blank = [""] * len(columns)
        rows.append([student, "total", *blank, f"{_points(got)}/{_points(best)} ({percent:.0f} %)"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for (student, stem), reason in sorted(report.failures.items()):
        lines.append(f"{student} / {stem} failed: {reason}")
    return "\n".join(lines)


def write_csv(report: GradeReport, path: Path) -> None:
    """One row per student, notebook and exercise (0 where not handed in or failed)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "notebook", "exercise", "score", "max_score"])
        for student in report.students:
            for stem in report.notebooks:
                scores = report.scores.get((student, stem), {})
                for name, points in report.exercises[stem].items():
                    score = scores.get(name, 0.0)
                    writer.writerow([student, stem, name, _points(score), _points(points)])


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/assignments.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    release_parser = commands.add_parser("release", help="write the student edition")
    release_parser.add_argument(
        "prefixes", nargs="*", help="only notebooks whose name starts with one of these"
    )
    release_parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="output folder (default: build/student/)"
    )
    release_parser.add_argument(
        "--without-nbgrader",
        action="store_true",
        help="use this tool's own transformation, not nbgrader's",
    )
    grade_parser = commands.add_parser(
        "grade", help="autograde SUBMISSIONS/<student>/<notebook>.ipynb"
    )
    grade_parser.add_argument("submissions", help="folder with one folder per student")
    grade_parser.add_argument(
        "--quick", action="store_true", help="set QUICK = True before grading"
    )
    grade_parser.add_argument("--csv", help="also write the scores to this CSV file")
    grade_parser.add_argument(
        "--keep", help="keep nbgrader's course folder here (a new or empty folder)"
    )
    grade_parser.add_argument(
        "--timeout", type=int, default=600, help="seconds allowed per cell (default 600)"
    )
    metadata_parser = commands.add_parser(
        "metadata", help="write (or --check) the nbgrader metadata"
    )
    metadata_parser.add_argument(
        "prefixes", nargs="*", help="only notebooks whose name starts with one of these"
    )
    metadata_parser.add_argument(
        "--check", action="store_true", help="only report problems; exit 1 if any"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            start = time.perf_counter()
            use_nbgrader = nbgrader_available() and not args.without_nbgrader
            written = release(course_notebooks(args.prefixes), Path(args.out), use_nbgrader)
            for path in written:
                print(f"wrote {path}")
            how = "nbgrader generate_assignment" if use_nbgrader else "without nbgrader"
            seconds = time.perf_counter() - start
            print(f"student edition of {len(written)} notebook(s), {how}, in {seconds:.1f} s")
        elif args.command == "grade":
            if args.timeout <= 0:
                raise UsageError(f"--timeout {args.timeout} must be a positive number of seconds")
            if args.csv and not Path(args.csv).resolve().parent.is_dir():
                raise UsageError(f"--csv {args.csv}: its folder does not exist")
            report = grade(
                Path(args.submissions), quick=args.quick, keep=args.keep, timeout=args.timeout
            )
            print(report.table())
            print(
                f"graded {len(report.scores) + len(report.failures)} notebook(s) in {report.seconds:.0f} s"
            )
            if args.csv:
                write_csv(report, Path(args.csv))
                print(f"wrote {args.csv}")
            if report.course_dir:
                print(f"nbgrader's course folder: {report.course_dir}")
        else:
            paths = course_notebooks(args.prefixes)
            if args.check:
                problems = [problem for path in paths for problem in check_notebook(path)]
                for problem in problems:
                    print(problem)
                print(f"{len(paths)} notebook(s), {len(problems)} problem(s)")
                return 1 if problems else 0
            for path in paths:
                print(f"{'updated' if write_metadata(path) else 'unchanged'} {path.name}")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
