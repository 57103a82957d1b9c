"""The package's shape: every module on a layer, every package import at the top and pointing down."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "advcl_lite"
# DEVELOPING.md, "Layout": a module may import only from lower layers. A subpackage (a folder of
# modules, such as viz/) is one unit on one layer: its modules import each other freely (`from .x`)
# and the rest of the package only downwards (`from ..x`).
LAYERS = [
    ("runtime", "presets", "frequency", "losses", "optim", "distributed"),
    ("checkpoint", "data", "views", "training"),
    ("models", "attacks", "diagnostics"),
    ("clustering", "evaluate", "results", "spectra", "pretrained", "methods"),
    ("pseudo_labels", "checks", "finetune"),
    ("pretrain", "viz"),
    ("tour", "course", "analysis", "encoders"),
    ("site",),
    ("cli",),
]
LAYER = {m: i for i, mods in enumerate(LAYERS) for m in mods}
FACES = {"__init__": 1, "__main__": len(LAYERS)}   # the package face may import layers 0-1; __main__ only cli


def unit(path: Path) -> str:
    """The layered unit a file belongs to: its module name, or its subpackage's name (viz/core.py -> viz)."""
    return path.stem if path.parent == PACKAGE else path.parent.name


def package_imports(tree: ast.Module, package: str | None = None) -> list[tuple[str, ast.ImportFrom | ast.Import, bool]]:
    """(imported unit, node, at top level) for every import of an advcl_lite module.

    ``package``: the subpackage the file sits in (None: advcl_lite itself). Inside it, ``from .x`` is a
    sibling and comes back as ``package``; ``from ..x`` is the package module ``x``.
    """
    top = set(map(id, tree.body))
    depth = 1 if package is None else 2          # the relative level that names advcl_lite itself
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == depth:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif package is not None and node.level == 1:
                names = [package]
            elif node.level == 0 and (node.module or "").startswith("advcl_lite"):
                rest = node.module.split(".")[1:]
                names = rest[:1] if rest else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("advcl_lite.")]
        found += [(n, node, id(node) in top) for n in names]
    return found


def modules() -> list[Path]:
    """Every module of the package, those of its subpackages (one folder deep) included."""
    return sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*/*.py"))


def test_every_module_has_a_layer():
    for sub in {p.parent for p in modules()} - {PACKAGE}:
        assert (sub / "__init__.py").exists(), f"{sub.name}/ holds modules but no __init__.py"
        assert not (PACKAGE / f"{sub.name}.py").exists(), f"both {sub.name}.py and {sub.name}/: keep one"
        assert not list(sub.glob("*/*.py")), f"{sub.name}/ nests a package; the layout is one folder deep"
    names = {unit(p) for p in modules()} - set(FACES)
    assert names == set(LAYER), f"add to LAYERS (and DEVELOPING.md): {sorted(names - set(LAYER))}; " \
                                f"remove: {sorted(set(LAYER) - names)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE).with_suffix("")).replace("/", "."))
def test_imports_point_down_and_sit_at_the_top(path):
    tree = ast.parse(path.read_text())
    name_of = str(path.relative_to(PACKAGE))
    own_unit = unit(path)
    package = None if path.parent == PACKAGE else own_unit
    own = LAYER.get(own_unit, FACES.get(own_unit))
    for name, node, at_top in package_imports(tree, package):
        assert at_top, f"{name_of}:{node.lineno} imports {name} inside a function or block; move it to the top"
        if own_unit == "__main__":
            assert name == "cli", f"__main__ imports only cli, not {name}"
            continue
        assert name in LAYER, f"{name_of}:{node.lineno} imports unknown module {name}"
        if name == package:
            continue                                   # a sibling in the same subpackage
        assert LAYER[name] < own, (f"{name_of}:{node.lineno} (layer {own}) imports {name} (layer {LAYER[name]}): "
                                   f"imports must point to a lower layer")


def test_the_checker_catches_an_upward_and_a_nested_import():
    """The rule above is not vacuous: a hand-made module breaking it is caught."""
    tree = ast.parse("from .cli import main\n\ndef f():\n    from .presets import PRESETS\n")
    found = {(n, top) for n, _, top in package_imports(tree)}
    assert found == {("cli", True), ("presets", False)}
    assert LAYER["cli"] > LAYER["presets"]
    # inside a subpackage: `.core` is a sibling, `..cli` and `advcl_lite.viz.core` name package units
    tree = ast.parse("from .core import _plt\nfrom ..cli import main\nfrom advcl_lite.viz.core import widget\n"
                     "import advcl_lite.spectra\n\ndef f():\n    from ..presets import PRESETS\n")
    found = {(n, top) for n, _, top in package_imports(tree, "viz")}
    assert found == {("viz", True), ("cli", True), ("spectra", True), ("presets", False)}
    assert LAYER["cli"] > LAYER["viz"]
    # a module below viz importing it is an upward import
    found = {n for n, _, _ in package_imports(ast.parse("from .viz import plot_views\n"))}
    assert found == {"viz"} and LAYER["viz"] > LAYER["pseudo_labels"]


def test_no_module_calls_dot_cuda():
    """One device choice, resolved once (runtime.resolve_device, distributed.setup): no hard-coded .cuda()."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "cuda" and not n.args]
        assert not calls, f"{path.name}:{calls[0]} calls .cuda(); use the resolved device"


MAX_FUNCTION_LINES = 80
# functions allowed to be longer, each with its reason (none today; add one only with a reason a reviewer accepts)
LONG_FUNCTIONS: dict[str, str] = {}


def _code_lines(fn: ast.FunctionDef) -> int:
    """A function's lines from its first statement after the docstring to its end."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_is_longer_than_80_lines():
    """A function reads top to bottom on one screen: at most 80 lines of code (its docstring not counted)."""
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(PACKAGE.parent)}:{node.name}"] = _code_lines(node)
    unexplained = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not unexplained, f"split these functions (lines of code): {unexplained}"
    assert set(LONG_FUNCTIONS) <= set(long), f"exceptions no longer needed: {set(LONG_FUNCTIONS) - set(long)}"
