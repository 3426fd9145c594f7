"""The instructor edition, the student edition and autograding (tools/assignments.py, nbgrader).

Static checks read the committed notebooks. The tests marked ``notebook`` execute each edition
at most once per session: the instructor edition is the papermill run shared with
tests/test_notebooks.py (graded here from its outputs), the student edition is released once
and autograded once with --quick, and every test reads those results.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
sys.path.insert(0, str(ROOT / "tools"))

import assignments  # noqa: E402  (tools/ is not a package)

MARKER_WORDS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _significant(lines: list[str]) -> set[str]:
    """Lines worth looking for: not blank, not a comment, not a bare ``...``, 8+ characters."""
    kept = {line.strip() for line in lines}
    return {line for line in kept if len(line) >= 8 and not line.startswith("#")}


# ----------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_tool_finds_no_problem_in_the_exercise_cells(path: Path):
    assert assignments.check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_solution_cell_is_followed_by_a_graded_locked_check_cell(path: Path):
    cells = _cells(path)
    solutions = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution")]
    assert len(solutions) >= 3, "at least three exercises per notebook"
    for i in solutions:
        solution, check = _nbgrader(cells[i]), _nbgrader(cells[i + 1])
        assert cells[i]["cell_type"] == "code" and "### BEGIN SOLUTION" in _source(cells[i])
        assert solution == {**solution, "grade": False, "locked": False, "schema_version": 3}
        assert cells[i + 1]["cell_type"] == "code", (
            f"{solution['grade_id']} needs a check cell after it"
        )
        assert (
            check.get("grade") is True
            and check.get("locked") is True
            and check.get("solution") is False
        )
        assert check.get("schema_version") == 3 and check.get("points", 0) > 0
        assert check["points"] == len(re.findall(r"\bcheck_\w+\(", _source(cells[i + 1])))
    graded = [i for i, c in enumerate(cells) if _nbgrader(c).get("grade")]
    assert graded == [i + 1 for i in solutions], "every graded cell checks the solution before it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_grade_ids_are_unique_and_nbgrader_accepts_the_metadata(path: Path):
    import nbformat
    from nbgrader.nbgraderformat import MetadataValidator

    ids = [_nbgrader(c)["grade_id"] for c in _cells(path) if _nbgrader(c)]
    assert ids and len(ids) == len(set(ids))
    assert all(re.fullmatch(r"ex\d+_(solution|check)", grade_id) for grade_id in ids)
    MetadataValidator().validate_nb(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_markers_appear_only_where_nbgrader_expects_them(path: Path):
    for cell in _cells(path):
        text, meta = _source(cell), _nbgrader(cell)
        if "BEGIN SOLUTION" in text or "END SOLUTION" in text:
            assert meta.get("solution"), (
                f"solution markers in a cell that is not a solution cell: {text[:80]}"
            )
        if "HIDDEN TESTS" in text:
            assert meta.get("grade"), f"hidden-test markers outside a graded cell: {text[:80]}"
        if cell["cell_type"] == "markdown":
            assert not any(word in text for word in MARKER_WORDS), text[:120]


def test_write_metadata_is_idempotent_and_makes_a_new_exercise_valid(tmp_path: Path):
    copy = tmp_path / NOTEBOOKS[0].name
    copy.write_bytes(NOTEBOOKS[0].read_bytes())
    assert (
        assignments.write_metadata(copy) is False and copy.read_bytes() == NOTEBOOKS[0].read_bytes()
    )

    def cell(kind: str, text: str) -> dict:
        extra = {"execution_count": None, "outputs": []} if kind == "code" else {}
        return {"cell_type": kind, "id": f"c{len(text)}", "metadata": {}, "source": text, **extra}

    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    nb["cells"] += [
        cell("markdown", "**Exercise 9.** Add one."),
        cell("code", "ex9 = ...\n### BEGIN SOLUTION\nex9 = 1 + 1\n### END SOLUTION"),
        cell("code", 'exercises.check_equal(ex9, 2, "the sum", "add them");'),
    ]
    new = tmp_path / "99_new.ipynb"
    assignments.write_notebook(new, nb)
    assert assignments.check_notebook(new) != []  # no metadata yet
    assert assignments.write_metadata(new) is True
    assert assignments.check_notebook(new) == []
    last = json.loads(new.read_text(encoding="utf-8"))["cells"][-2:]
    assert [_nbgrader(c)["grade_id"] for c in last] == ["ex9_solution", "ex9_check"]
    assert _nbgrader(last[1])["points"] == 1


def test_a_check_cell_ending_with_a_value_is_refused(tmp_path: Path):
    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    check = next(c for c in nb["cells"] if _nbgrader(c).get("grade"))
    check["source"] = _source(check).rstrip().rstrip(";") + "\n1.0"  # nbgrader: a partial grade
    broken = tmp_path / NOTEBOOKS[0].name
    assignments.write_notebook(broken, nb)
    assert any("partial grade" in problem for problem in assignments.check_notebook(broken))


def test_set_quick_changes_only_the_parameters_cell():
    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    quick = assignments.set_quick(nb)
    changed = [i for i, (a, b) in enumerate(zip(nb["cells"], quick["cells"])) if a != b]
    assert len(changed) == 1
    cell = quick["cells"][changed[0]]
    assert "parameters" in cell["metadata"]["tags"]
    assert re.search(r"^QUICK = True", _source(cell), re.M) and "QUICK = False" not in _source(cell)


def test_the_score_table_has_a_column_per_exercise_and_totals():
    report = assignments.GradeReport(
        exercises={"01_a": {"ex1": 3.0, "ex2": 1.0}, "02_b": {"ex1": 2.0}},
        scores={("ann", "01_a"): {"ex1": 3.0, "ex2": 0.0}, ("bo", "02_b"): {"ex1": 2.0}},
        students=["ann", "bo"],
    )
    lines = [line.split() for line in report.table().splitlines()]
    assert lines[0] == ["student", "notebook", "ex1", "ex2", "total"]
    assert lines[2] == ["ann", "01_a", "3/3", "0/1", "3/4"]
    assert lines[3] == ["ann", "02_b", "-/2", "0/2", "(not", "handed", "in)"]
    assert lines[4] == ["ann", "total", "3/6", "(50", "%)"]
    assert lines[5] == ["bo", "01_a", "-/3", "-/1", "0/4", "(not", "handed", "in)"]
    assert lines[6] == ["bo", "02_b", "2/2", "2/2"]
    assert lines[7] == ["bo", "total", "2/6", "(33", "%)"]


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("loose", "lies directly in"),
        ("empty_student", "holds no .ipynb file"),
        ("unknown", "is not one of the course notebooks"),
        ("garbage", "is not a readable notebook"),
        ("bad_name", "student folder's name"),
        ("nothing", "holds no student folder"),
    ],
)
def test_bad_submissions_get_a_one_line_error(tmp_path: Path, capsys, layout: str, expected: str):
    folder = tmp_path / "submissions"
    name = NOTEBOOKS[0].name
    if layout == "file":
        folder.write_text("not a folder")
    elif layout != "missing":
        folder.mkdir()
    if layout == "loose":
        (folder / name).write_bytes(NOTEBOOKS[0].read_bytes())
    elif layout == "empty_student":
        (folder / "ann").mkdir()
    elif layout == "unknown":
        (folder / "ann").mkdir()
        (folder / "ann" / "42_mine.ipynb").write_text("{}")
    elif layout == "garbage":
        (folder / "ann").mkdir()
        (folder / "ann" / name).write_text("this is not JSON")
    elif layout == "bad_name":
        (folder / "ann smith").mkdir()
        (folder / "ann smith" / name).write_bytes(NOTEBOOKS[0].read_bytes())
    assert assignments.main(["grade", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and expected in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_release_refuses_an_output_path_that_is_a_file(tmp_path: Path, capsys):
    target = tmp_path / "a_file"
    target.write_text("")
    assert assignments.main(["release", "01", "--out", str(target)]) == 1
    assert capsys.readouterr().err.startswith("error: --out")


# ----------------------------------------------------------------------------- student edition


@pytest.fixture(scope="session")
def student_edition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every notebook released once, through nbgrader's generate_assignment."""
    out = tmp_path_factory.mktemp("student")
    assignments.release(NOTEBOOKS, out, use_nbgrader=True)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_solution_or_hidden_test_survives_in_the_student_edition(
    path: Path, student_edition: Path
):
    instructor, student = _cells(path), _cells(student_edition / path.name)
    assert len(student) == len(instructor)
    student_text = "\n".join(_source(c) for c in student)
    student_lines = {line.strip() for line in student_text.split("\n")}
    # A line also written outside the solutions and hidden tests (e.g. in a lesson cell) is no leak.
    public = _significant(
        [line for c in instructor for line in assignments.public_lines(_source(c))]
    )
    for cell in instructor:
        meta, text = _nbgrader(cell), _source(cell)
        secret = (
            assignments.solution_lines(text)
            if meta.get("solution")
            else assignments.hidden_lines(text)
        )
        lines = _significant(secret) - public
        assert not meta.get("solution") or lines, f"{meta['grade_id']}: nothing to look for"
        for line in lines:
            assert line not in student_lines, (
                f"{meta['grade_id']}: {line!r} is in the student edition"
            )
    assert not any(word in student_text for word in MARKER_WORDS)
    assert not [c for c in student if c.get("outputs")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_each_solution_becomes_a_stub_that_names_the_exercise(path: Path, student_edition: Path):
    label = path.name[:2]
    for cell in _cells(student_edition / path.name):
        meta = _nbgrader(cell)
        if meta.get("solution"):
            number = meta["grade_id"].removeprefix("ex").removesuffix("_solution")
            stub = f'raise NotImplementedError("Exercise {number} of notebook {label}: replace this line'
            assert stub in _source(cell) and "YOUR CODE HERE" not in _source(cell)
        if meta.get("grade"):
            assert cell["metadata"].get("editable") is False and meta.get("checksum")


def test_the_fallback_makes_the_same_student_edition_as_nbgrader(student_edition: Path):
    for path in NOTEBOOKS:
        own = assignments.student_edition(assignments.read_notebook(path), path.name[:2])
        released = assignments.read_notebook(student_edition / path.name)
        assert [_source(c) for c in own["cells"]] == [_source(c) for c in released["cells"]], (
            path.name
        )


# ----------------------------------------------------------------------------- grading


@pytest.fixture(scope="session")
def graded_student_edition(student_edition: Path, tmp_path_factory: pytest.TempPathFactory):
    """The untouched student edition of every notebook, autograded once with --quick."""
    submissions = tmp_path_factory.mktemp("submissions")
    (submissions / "untouched").mkdir()
    for path in NOTEBOOKS:
        (submissions / "untouched" / path.name).write_bytes(
            (student_edition / path.name).read_bytes()
        )
    course = tmp_path_factory.mktemp("course")
    return assignments.grade(submissions, quick=True, keep=course, progress=False)


@pytest.fixture(scope="session")
def instructor_grades(quick_runs, tmp_path_factory: pytest.TempPathFactory):
    """grade(path): the instructor edition's papermill run (shared with test_notebooks.py), graded."""
    done: dict[Path, assignments.GradeReport] = {}

    def grade(path: Path) -> assignments.GradeReport:
        if path not in done:
            executed = quick_runs(path)
            submissions = tmp_path_factory.mktemp("instructor")
            (submissions / "instructor").mkdir()
            (submissions / "instructor" / path.name).write_bytes(executed.read_bytes())
            done[path] = assignments.grade(submissions, execute=False, progress=False)
        return done[path]

    return grade


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_instructor_edition_gets_full_marks(path: Path, instructor_grades, needs_data: None):
    report = instructor_grades(path)
    assert report.failures == {}
    scores, points = report.scores["instructor", path.stem], report.exercises[path.stem]
    assert scores == points and sum(points.values()) > 0


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_untouched_student_edition_gets_zero(
    path: Path, graded_student_edition, needs_data: None
):
    report = graded_student_edition
    assert ("untouched", path.stem) not in report.failures, report.failures.get(
        ("untouched", path.stem)
    )
    scores = report.scores["untouched", path.stem]
    assert set(scores) == set(report.exercises[path.stem]) and not any(scores.values())


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_student_edition_runs_up_to_its_first_exercise(
    path: Path, graded_student_edition, needs_data: None
):
    executed = (
        graded_student_edition.course_dir / "autograded" / "untouched" / path.stem / path.name
    )
    cells = _cells(executed)
    errors = [
        (i, output)
        for i, cell in enumerate(cells)
        for output in cell.get("outputs", [])
        if output["output_type"] == "error"
    ]
    assert errors, "the untouched student edition raised nothing"
    first, output = errors[0]
    first_solution = next(i for i, c in enumerate(cells) if _nbgrader(c).get("solution"))
    assert first in (first_solution, first_solution + 1), (
        f"first error in cell {first}: {output['ename']}"
    )
    assert output["ename"] == "NotImplementedError"
    number = (
        _nbgrader(cells[first_solution])["grade_id"].removeprefix("ex").removesuffix("_solution")
    )
    assert f"Exercise {number} of notebook {path.name[:2]}" in output["evalue"]


def test_grading_existing_outputs_scores_what_the_outputs_show(tmp_path: Path):
    """grade(execute=False), used on the shared instructor runs, must see a failed check."""
    path = NOTEBOOKS[0]
    nb = json.loads(path.read_text(encoding="utf-8"))
    checks = [c for c in nb["cells"] if _nbgrader(c).get("grade")]
    for cell in checks:
        cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["✅ Correct: x\n"]}]
    checks[0]["outputs"].append(
        {"ename": "ExerciseCheckError", "evalue": "no", "output_type": "error", "traceback": []}
    )
    (tmp_path / "ann").mkdir()
    assignments.write_notebook(tmp_path / "ann" / path.name, nb)
    report = assignments.grade(tmp_path, execute=False, progress=False)
    points = report.exercises[path.stem]
    first = next(iter(points))
    assert report.scores["ann", path.stem] == {**points, first: 0.0}
