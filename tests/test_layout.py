"""The package's shape: every module on a layer, every package import at the top and pointing down."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "advcl_lite"
# DEVELOPING.md, "Layout": a module may import only from lower layers
LAYERS = [
    ("runtime", "presets", "frequency", "losses", "optim"),
    ("checkpoint", "data"),
    ("models", "attacks", "viz"),
    ("pseudo_labels", "evaluate", "spectra", "pretrained"),
    ("pretrain", "finetune", "checks"),
    ("tour", "course"),
    ("cli",),
]
LAYER = {m: i for i, mods in enumerate(LAYERS) for m in mods}
FACES = {"__init__": 1, "__main__": len(LAYERS)}   # the package face may import layers 0-1; __main__ only cli


def package_imports(tree: ast.Module) -> list[tuple[str, ast.ImportFrom | ast.Import, bool]]:
    """(imported module, node, at top level) for every import of an advcl_lite module."""
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.level == 0 and (node.module or "").startswith("advcl_lite"):
                rest = node.module.split(".")[1:]
                names = rest[:1] if rest else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("advcl_lite.")]
        found += [(n, node, id(node) in top) for n in names]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def test_every_module_has_a_layer():
    names = {p.stem for p in modules()} - set(FACES)
    assert names == set(LAYER), f"add to LAYERS (and DEVELOPING.md): {sorted(names - set(LAYER))}; " \
                                f"remove: {sorted(set(LAYER) - names)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_imports_point_down_and_sit_at_the_top(path):
    tree = ast.parse(path.read_text())
    own = LAYER.get(path.stem, FACES.get(path.stem))
    for name, node, at_top in package_imports(tree):
        assert at_top, f"{path.name}:{node.lineno} imports {name} inside a function or block; move it to the top"
        if path.stem == "__main__":
            assert name == "cli", f"__main__ imports only cli, not {name}"
            continue
        assert name in LAYER, f"{path.name}:{node.lineno} imports unknown module {name}"
        assert LAYER[name] < own, (f"{path.name}:{node.lineno} (layer {own}) imports {name} (layer {LAYER[name]}): "
                                   f"imports must point to a lower layer")


def test_the_checker_catches_an_upward_and_a_nested_import():
    """The rule above is not vacuous: a hand-made module breaking it is caught."""
    tree = ast.parse("from .cli import main\n\ndef f():\n    from .presets import PRESETS\n")
    found = {(n, top) for n, _, top in package_imports(tree)}
    assert found == {("cli", True), ("presets", False)}
    assert LAYER["cli"] > LAYER["presets"]
