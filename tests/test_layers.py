"""The package's layers point down: a module imports only from its own package or from layers below it, so there
are no cycles between packages (docs/ARCHITECTURE.md, "Layers"). Read from the source (``ast``), nothing imported."""

import ast
from pathlib import Path

import fpn

# bottom first; packages on one line sit side by side and must not import each other
LAYERS = [
    ("fpn", "fpn.errors", "fpn.io"),  # fpn: the package root (its __version__; the Python API only lazily)
    ("fpn.config",),
    ("fpn.structures",),
    ("fpn.data", "fpn.model"),
    ("fpn.evaluation",),
    ("fpn.checkpoint",),
    ("fpn.interop",),
    ("fpn.engine",),
    ("fpn.export", "fpn.visualize", "fpn.video"),
    ("fpn.api",),
    ("fpn.perf",),
    ("fpn.commands",),
    ("fpn.cli", "fpn.__main__"),
    ("fpn.seed_scripts",),
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}
ROOT = Path(fpn.__file__).parent


def unit_of(module: str) -> str:
    """The layer unit a module belongs to: ``fpn.data.loader`` -> ``fpn.data``, ``fpn.config`` -> ``fpn.config``."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LEVEL:
            return ".".join(parts[:n])
    raise AssertionError(f"{module}: in no layer of LAYERS")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fpn"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fpn" and not node.level:
            found |= {f"{node.module}.{a.name}" if node.module == "fpn" else node.module for a in node.names}
    return found


def test_every_import_points_down():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("fpn",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        here = unit_of(module)
        for target in sorted(imports(path)):
            there = unit_of(target)
            if there != here and LEVEL[there] >= LEVEL[here] and not (here, there) == ("fpn.__main__", "fpn.cli") and (module, target) != ("fpn", "fpn.api"):
                wrong.append(f"{module} imports {target} ({there} is not below {here})")
    assert not wrong, "\n".join(wrong)
