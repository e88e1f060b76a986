"""The package's layering, as the README's architecture section states it: a subpackage imports only
from the layers below its own (lazy imports inside functions count), and no modules import each
other in a circle. Read from the source with `ast`, so a new upward arrow fails here, not in review."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "finetune_opt"

# Bottom to top; a unit is a subpackage or a top-level module ("finetune_opt": the package's own
# __init__, the optimizer API that HF Trainer users import, and the version).
LAYERS = [
    ["errors", "_quiet_imports"],
    ["optim", "metrics", "distributed"],
    ["finetune_opt"],
    ["tasks"],
    ["data", "models"],
    ["measure"],
    ["train"],
    ["config"],
    ["recipes", "report"],
    ["study", "plan"],
    ["cli"],
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(module: str) -> set[str]:
    """The finetune_opt modules `module` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module}


GRAPH = {m: imported_modules(m) for m in MODULES}


def test_every_unit_has_a_layer():
    assert {unit(m) for m in MODULES} == set(RANK)


def test_every_subpackage_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        summary = (doc or "").split("\n\n")[0]
        assert summary and "\n" not in summary and summary.endswith("."), f"{init}: begins with a one-line summary"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_lower_layers(module):
    upward = sorted(t for t in GRAPH[module] if unit(t) != unit(module) and RANK[unit(t)] >= RANK[unit(module)])
    assert not upward, f"{module} ({unit(module)}) imports from its own layer or above: {upward}"


def test_no_circles():
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for target in sorted(GRAPH[m]):
            visit(target)
        path.pop()
        done.add(m)

    for m in sorted(GRAPH):
        visit(m)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """A module of train/ that imported from config/ would be named (the test above can fail)."""
    fake = tmp_path / "finetune_opt" / "train" / "upward.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from finetune_opt.config.run_config import RunConfig\n")
    monkeypatch.setitem(MODULES, "finetune_opt.train.upward", fake)
    assert "finetune_opt.config.run_config" in imported_modules("finetune_opt.train.upward")


def test_no_function_longer_than_a_screen():
    """Short functions (the brief's ~60 lines): a longer one is split where it does two things."""
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
