"""The house's rules. Data flows one way: a package imports its own modules and lower layers, never higher ones.
Layers, lowest first (README, "A map of the code"): errors/files · model · kernels · corpus · data · evaluation ·
training · cli. Every import counts, also those inside functions (imported lazily, still a dependency). And a
function fits on a screen: at most 60 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bert_domain_ft

PACKAGE = Path(bert_domain_ft.__file__).parent
LAYERS = ("", "model", "kernels", "corpus", "data", "evaluation", "training", "cli")  # "": errors.py, files.py


def module_name(path: Path) -> str:
    """``data/pregenerate.py`` → ``data.pregenerate``; ``data/__init__.py`` → ``data``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def layer_of(module: str) -> int:
    """The layer of a module named relative to the package (``data.pregenerate``; ``errors``; ``""``: the package)."""
    top = module.split(".")[0]
    if top == "__main__":
        return LAYERS.index("cli")
    return LAYERS.index(top) if top in LAYERS else 0


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module relative to the package) of every import of this package in ``source``, the text of ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bert_domain_ft":
            found.append((node.lineno, node.module.removeprefix("bert_domain_ft").lstrip(".")))
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "bert_domain_ft"]
            found += [(node.lineno, name.removeprefix("bert_domain_ft").lstrip(".")) for name in names]
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    imports = imported_modules(source, module, is_package)
    return [f"line {line}: imports {target or 'bert_domain_ft'}" for line, target in imports if layer_of(target) > own]


def test_no_module_imports_a_higher_layer() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found = upward_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
        problems += [f"{path.relative_to(PACKAGE.parent)}, {problem}" for problem in found]
    assert problems == []


MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (N lines)`` of every function or method in ``source`` longer than ``limit`` lines, decorators excluded."""
    nodes = [node for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    sizes = [(node.name, node.end_lineno - node.lineno + 1) for node in nodes]
    return [f"{name} ({lines} lines)" for name, lines in sizes if lines > limit]


def test_no_function_is_longer_than_60_lines() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}: {problem}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for problem in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_the_length_check_counts_def_line_and_body_of_functions_and_methods() -> None:
    def function(name: str, body_lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(body_lines))

    assert long_functions(function("fits", 59)) == []  # the def line and 59 more: 60
    assert long_functions(function("long", 60)) == ["long (61 lines)"]
    assert long_functions("class C:\n" + function("method", 60, indent="    ")) == ["method (61 lines)"]


def test_every_package_is_a_known_layer() -> None:
    packages = {path.parent.name for path in PACKAGE.rglob("__init__.py") if path.parent != PACKAGE}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS (and to README's map)"


@pytest.mark.parametrize(
    ("source", "module", "upward"),
    [
        ("from bert_domain_ft.training.loop import TrainingLoop\n", "data.example", True),
        ("from ..training import loop\n", "data.example", True),
        ("def f():\n    import bert_domain_ft.cli\n", "model.example", True),
        ("from bert_domain_ft.data.loader import collate_rows\n", "training.example", False),
        ("from .masking import MaskingTables\n", "data.example", False),
        ("from bert_domain_ft.errors import UserError\n", "corpus.example", False),
        ("from bert_domain_ft.evaluation.probe import run_probe\n", "errors", True),
    ],
)
def test_the_check_sees_upward_imports_wherever_they_are(source: str, module: str, upward: bool) -> None:
    assert bool(upward_imports(source, module)) == upward
