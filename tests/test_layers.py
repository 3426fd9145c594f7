"""The helpers package is layered: nothing lower imports anything higher.

Every ``helpers/*.py`` is parsed with ``ast``, and every import of another helpers module is
checked, the ones inside functions included (a lazy import is still a dependency). A module may
import modules of lower layers, and modules of its own layer as long as no cycle forms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"

#: Lowest first. ``commands`` (the scaffold the training commands are built on) sits below the
#: methods: a method's command line uses it (inside ``main``, ``build_parser``, ``train_command``,
#: see the test below) and it uses no method. ``side_by_side`` compares any ``FewShotMethod`` on
#: shared episodes, so it sits below the methods too and names none of them.
#: ``validation`` and ``panels`` are listed before they exist, so the order holds when they come.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"__init__", "checks", "validation", "device", "runs", "datasets", "checkpoints"}),
    ("episodes", {"episodes"}),
    ("the shared few-shot interface", {"fewshot"}),
    ("encoders", {"nets"}),
    ("the training loop", {"training"}),
    ("the command scaffold", {"commands"}),
    ("the comparison of methods", {"side_by_side"}),
    ("methods", {"protonet", "matching", "maml", "maml_rl", "one_shot", "siamese", "zero_shot"}),
    ("plots, exercises and claims", {"plots", "exercises", "claims"}),
    ("widgets", {"widgets"}),
    ("panels", {"panels"}),
]
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}

#: Upward imports that are tolerated, as (importer, imported, function): none since the panels moved.
KNOWN_UPWARD: set[tuple[str, str, str]] = set()


def helpers_imports(path: Path) -> list[tuple[str, str]]:
    """``(imported helpers module, enclosing function or "")`` for every import in ``path``."""
    modules = {p.stem for p in HELPERS.glob("*.py")} | set(RANK)
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not function
                else function
            )
            if isinstance(child, ast.ImportFrom):
                absolute = child.level == 0 and (child.module or "").split(".")[0] == "helpers"
                if child.level == 1 or absolute:
                    target = (
                        (child.module or "").removeprefix("helpers").lstrip(".")
                        if absolute
                        else (child.module or "")
                    )
                    if target:  # from .x import a / from helpers.x import a
                        found.append((target.split(".")[0], function))
                    else:  # from . import x, CONSTANT: a module when there is one, else the package itself
                        found.extend(
                            (alias.name if alias.name in modules else "__init__", function)
                            for alias in child.names
                        )
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "helpers":
                        found.append((parts[1] if len(parts) > 1 else "__init__", function))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return [(module, function) for module, function in found if module != path.stem]


def import_graph() -> dict[str, list[tuple[str, str]]]:
    return {path.stem: helpers_imports(path) for path in sorted(HELPERS.glob("*.py"))}


def test_every_helpers_module_has_a_layer():
    missing = sorted(set(import_graph()) - set(RANK))
    assert not missing, (
        f"declare the layer of {', '.join(missing)} in LAYERS of tests/test_layers.py"
    )


def test_nothing_lower_imports_anything_higher():
    upward = []
    for module, imports in import_graph().items():
        for imported, function in imports:
            if (
                RANK.get(imported, -1) > RANK.get(module, len(LAYERS))
                and (module, imported, function) not in KNOWN_UPWARD
            ):
                where = f"{module}.{function}" if function else module
                upward.append(
                    f"{where} imports {imported} ({LAYERS[RANK[imported]][0]}, above {LAYERS[RANK[module]][0]})"
                )
    assert not upward, "; ".join(upward)


def test_methods_load_the_command_scaffold_only_to_run_a_command():
    # importing a method (as every notebook does) must not pull in argparse, signals and the scaffold
    at_import = [
        module
        for module, imports in import_graph().items()
        if LAYERS[RANK.get(module, 0)][0] == "methods" and ("commands", "") in imports
    ]
    assert not at_import, (
        f"{', '.join(at_import)} import helpers.commands at module level; import it inside the command's functions"
    )


def test_no_import_cycles():
    graph = {
        module: {imported for imported, _ in imports} for module, imports in import_graph().items()
    }
    state: dict[str, str] = {}

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycle = (
                    path[path.index(imported) :] + [imported]
                    if imported in path
                    else [module, imported]
                )
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                walk(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])


def test_the_checker_sees_every_form_of_import_and_those_inside_functions(tmp_path):
    (tmp_path / "episodes.py").write_text(
        "def f():\n    from .widgets import Panel\n    from . import plots, CHECKPOINT_DIR\n"
    )
    (tmp_path / "widgets.py").write_text(
        "import helpers.plots\nfrom helpers.fewshot import evaluate\nimport numpy\nfrom .. import x\n"
    )
    assert helpers_imports(tmp_path / "episodes.py") == [
        ("widgets", "f"),
        ("plots", "f"),
        ("__init__", "f"),
    ]
    assert helpers_imports(tmp_path / "widgets.py") == [("plots", ""), ("fewshot", "")]
