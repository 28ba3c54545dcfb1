"""The package layout holds (ARCHITECTURE.md, "Package layout"): each stage imports only the stages to
its left, counting imports inside functions too, and no module imports itself back through others."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sira"
# core ← features ← ingest ← registry ← training ← serving ← monitoring ← http ← demo ← cli
LAYERS = ["core", "features", "ingest", "registry", "training", "serving", "monitoring", "http", "demo", "cli"]
MAX_LINES = 600
# Left of #20 (split next): these may not grow, and the limit applies to them once they are cut.
OVER_THE_LIMIT: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every sira module this file imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sira.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sira"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from sira.core import db`
    modules = _modules()
    return {m for m in found if m in modules}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_subpackage_is_a_known_layer_with_its_public_names():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(LAYERS), packages ^ set(LAYERS)
    for name in LAYERS:
        init = ROOT / name / "__init__.py"
        tree = ast.parse(init.read_text())
        exported = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and any(getattr(t, "id", None) == "__all__" for t in n.targets))
        assert exported, f"sira/{name}/__init__.py names no public API"
        missing = [m for m in exported if not (ROOT / name / f"{m}.py").exists()]
        assert not missing, f"sira/{name}.__all__ names modules that do not exist: {missing}"
    assert not [p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")], \
        "a module outside the stage packages"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_one_above_it(layer):
    rank = LAYERS.index(layer)
    wrong = []
    for module, path in _modules().items():
        if _layer(module) != layer:
            continue
        for target in _imports(path):
            other = _layer(target)
            if other is not None and LAYERS.index(other) > rank:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {t for t in _imports(p) if t != m and not t.endswith(".__init__")} for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_over_the_size_limit():
    big = {name: n for p in ROOT.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > OVER_THE_LIMIT.get(name := str(p.relative_to(ROOT.parent)),
                                                                          MAX_LINES)}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_readmes_package_map_names_every_module():
    """README's package map (a newcomer's index of the code) lost nine modules as they were added."""
    import re

    readme = (ROOT.parent / "README.md").read_text()
    for layer in LAYERS:
        row = re.search(rf"^\| `sira/{layer}/` \| (.*?) \|", readme, re.M)
        assert row, f"README's package map has no row for sira/{layer}/"
        listed = set(re.findall(r"`(\w+)`", row.group(1)))
        present = {p.stem for p in (ROOT / layer).glob("*.py") if p.stem != "__init__"}
        assert listed == present, f"sira/{layer}/: README lists {sorted(listed - present)} that do not exist, " \
                                  f"misses {sorted(present - listed)}"
