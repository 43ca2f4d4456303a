"""The tree's layers (docs/architecture.md): every module imports only its own layer and those below, with
no import circle, counting imports inside functions and those made with ``importlib.import_module``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from test_packaging import PARTS, ROOT  # the source folders and the import package each installs as

# Bottom to top. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "contracts and data",
        (
            "genserve",  # the package itself: its docstring and version
            "genserve.config",
            "genserve.errors",
            "genserve.families",
            "genserve.schema",
            "genserve.protocol",
            "genserve.metadata",
            "genserve.imaging",
            "genserve.manifest",
            "genserve.gpu_stack",
            "genserve.served_models",
        ),
    ),
    (
        "runtimes (no Triton)",
        (
            "genserve.onnx_sessions",
            "genserve.torch_sessions",
            "genserve.faceswap",
            "genserve.ocr",
            "genserve.diffusion",
        ),
    ),
    ("Triton adapters", ("genserve.triton",)),
    (
        "server process",
        (
            "genserve.server",
            "genserve.installation",
            "genserve.load_order",
            "genserve.drain",
            "genserve.ports",
            "genserve.model_repositories",
            "genserve.server_log",
            "genserve.front",
            "genserve.supervision",
            "genserve.admin",
            "genserve.metrics",
            "genserve.memory",
        ),
    ),
    ("client, export and repository writers", ("genserve.client", "genserve.export", "genserve.repository")),
    (
        "commands, demo and benchmarks",
        ("genserve.cli", "genserve.commands", "genserve.demo", "genserve.benchmarks", "genserve.deploy"),
    ),
]


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PARTS.items():
        for source in (ROOT / folder).rglob("*.py"):
            parts = [p for p in source.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = source
    return found


def imported_names(tree: ast.AST) -> set[str]:
    """Every module name a source imports: import statements anywhere, ``from x import y`` as ``x:y`` (the
    module x.y where there is one, else x), and ``import_module("x")`` / ``import_module(f"x.{...}")`` calls
    (their constant part)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {f"{node.module}:{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and _called_name(node.func) == "import_module" and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
            elif isinstance(argument, ast.JoinedStr) and argument.values:
                first = argument.values[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value.rstrip("."))
    return names


def _called_name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def import_graph() -> dict[str, set[str]]:
    """genserve module -> the genserve modules it imports. ``from package import name`` counts as importing
    the module ``package.name`` when there is one, else the package."""
    known = modules()
    graph = {}
    for module, source in known.items():
        edges = set()
        for name in imported_names(ast.parse(source.read_text())):
            package, _, member = name.partition(":")
            name = f"{package}.{member}" if f"{package}.{member}" in known else package
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def layer_of(module: str) -> int:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # The bare package names itself alone; every other prefix names a module or a package's modules.
            inside = prefix != "genserve" and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best:
                best, layer = len(prefix), index
    assert layer is not None, f"{module} is in no layer: give it one in tests/test_layers.py and docs/architecture.md"
    return layer


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_imports_go_down_or_across_never_up():
    graph = import_graph()
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if target != "genserve" and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles():
    """No module reaches itself through its imports (a package's __init__ listing its modules is no circle
    as long as those modules import each other, not the package)."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph[module]
        return seen

    assert sorted(module for module in graph if module in reaches(module)) == []


def test_the_check_sees_import_module_edges(tmp_path):
    """The graph counts an ``import_module`` call, so an edge made that way cannot hide a circle."""
    tree = ast.parse("from importlib import import_module\nimport_module('genserve.triton.models')\n")
    assert "genserve.triton.models" in imported_names(tree)
    tree = ast.parse("import importlib\nimportlib.import_module(f'genserve.commands.{name}')\n")
    assert "genserve.commands" in imported_names(tree)


def test_code_that_runs_inside_triton_loads_no_build_time_code():
    """Every model the stack serves (its model.py lines, the ONNX leaf, the pipeline models' service)
    loads neither the export tool, the repository writers, the client nor the commands."""
    model_lines = [
        line
        for model_py in sorted((ROOT / "model_repository").glob("*/1/model.py"))
        for line in model_py.read_text().splitlines()
        if line.startswith("from genserve")
    ]
    code = "\n".join(
        [
            *(line.split("  #")[0] for line in model_lines),
            "import genserve.triton.onnx_leaf, genserve.diffusion.service, genserve.diffusion.settings",
            "import sys",
            "build = ('genserve.export', 'genserve.repository', 'genserve.client', 'genserve.commands', "
            "'genserve.demo', 'genserve.benchmarks')",
            "print(sorted(m for m in sys.modules if m.startswith(build)))",
        ]
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300, cwd=ROOT
    ).stdout
    assert len(model_lines) >= 5
    assert loaded.strip() == "[]"
