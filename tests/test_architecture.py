"""The package's import graph, read with `ast`: no module-level import cycles, and the layering of
docs/architecture.md (the runtime that goes on a Jetson never reaches the export/training side)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xlsr_edge"

# Layers of docs/architecture.md: a module under a key must not import anything under the listed prefixes,
# at module level or inside a function.
FORBIDDEN = {
    "xlsr_edge.runtime": (
        "xlsr_edge.export",
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.precision",
        "xlsr_edge.measure",
        "xlsr_edge.optimize",  # reads bundle.json "runtime" itself (runtime.tuned)
        "xlsr_edge.datasets",
        "xlsr_edge.scale",
        "torch",
        "transformers",
        "ray",
    ),
    "xlsr_edge.decoders": (
        "xlsr_edge.runtime",
        "xlsr_edge.export",
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.precision",
        "xlsr_edge.measure",
        "xlsr_edge.scale",
        "torch",
        "transformers",
        "ray",
    ),
    # precision scores with the floor's xlsr_edge.scoring, never with measure (measure runs precision's outputs)
    "xlsr_edge.precision": (
        "xlsr_edge.export",
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.measure",
    ),
    "xlsr_edge.measure": (
        "xlsr_edge.export.pipeline",
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.scale",  # eval --address hands evaluate() a Ray-backed recognizer; measure never reaches for Ray
        "xlsr_edge.optimize",
        "ray",
    ),
    # Ray scale-out: runs the runtime on a cluster; never the export/training side
    "xlsr_edge.scale": (
        "xlsr_edge.export",
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.precision",
        "torch",
        "transformers",
    ),
    "xlsr_edge.export": ("xlsr_edge.train", "xlsr_edge.commands", "xlsr_edge.cli"),
    # optimize drives export, precision, measure and the runtime; nothing below it reaches back for it
    "xlsr_edge.optimize": (
        "xlsr_edge.train",
        "xlsr_edge.commands",
        "xlsr_edge.cli",
        "xlsr_edge.scale",
        "ray",
    ),
    "xlsr_edge.train": ("xlsr_edge.commands", "xlsr_edge.cli"),
    # the shared floor: both halves import these, so they import nothing of the package above them
    "xlsr_edge.bundle": (
        "xlsr_edge.runtime",
        "xlsr_edge.export",
        "xlsr_edge.precision",
        "xlsr_edge.commands",
    ),
    "xlsr_edge.bundle_fields": (
        "xlsr_edge.runtime",
        "xlsr_edge.export",
        "xlsr_edge.precision",
        "xlsr_edge.commands",
    ),
    "xlsr_edge.datasets": (
        "xlsr_edge.runtime",
        "xlsr_edge.export",
        "xlsr_edge.precision",
        "xlsr_edge.commands",
    ),
    "xlsr_edge.text": ("xlsr_edge.",),
    "xlsr_edge.progress": ("xlsr_edge.",),
    "xlsr_edge.constants": ("xlsr_edge.",),
    "xlsr_edge.errors": ("xlsr_edge.",),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    module_level: bool  # runs when the module is imported (not inside a function or `if TYPE_CHECKING:`)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_edges(root: Path) -> tuple[set[str], list[Edge]]:
    """Every import statement of every module under ``root`` (a package folder)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    edges: list[Edge] = []
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST, module_level: bool, name: str = name, package: str = package) -> None:
            for child in ast.iter_child_nodes(node):
                level = module_level
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    level = False
                elif isinstance(child, ast.If) and _is_type_checking(child.test):
                    level = False
                if isinstance(child, ast.Import):
                    edges.extend(Edge(name, a.name, child.lineno, level) for a in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        edges.append(Edge(name, sub if sub in modules else base, child.lineno, level))
                visit(child, level)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return modules, edges


def find_cycle(modules: set[str], edges: list[Edge]) -> list[str] | None:
    """A module-level import cycle among ``modules``, or None. Importing a.b.c also runs the packages a and
    a.b, except the importer's own enclosing packages (Python has them half-initialized already)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if not e.module_level or e.target not in modules:
            continue
        parts = e.target.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            inside = e.source == target or e.source.startswith(target + ".")
            if target in modules and target != e.source and (i == len(parts) or not inside):
                graph[e.source].add(target)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := dfs(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state and (found := dfs(m)):
            return found
    return None


def layering_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        for layer, banned in FORBIDDEN.items():
            if e.source != layer and not e.source.startswith(layer + "."):
                continue
            for b in banned:
                if e.target == b.rstrip(".") or e.target.startswith(b if b.endswith(".") else b + "."):
                    if not e.target.startswith(layer):  # a layer may import itself
                        out.append(
                            f"{e.source} (line {e.line}) imports {e.target}: {layer} must not import {b}"
                        )
    return out


def test_no_module_level_import_cycle() -> None:
    modules, edges = import_edges(PACKAGE)
    assert len(modules) > 40  # the walk found the package
    assert find_cycle(modules, edges) is None


def test_layering_rules() -> None:
    _, edges = import_edges(PACKAGE)
    assert layering_violations(edges) == []


def test_only_the_cli_imports_commands() -> None:
    _, edges = import_edges(PACKAGE)
    bad = [
        f"{e.source} imports {e.target}"
        for e in edges
        if e.target.startswith(("xlsr_edge.commands", "xlsr_edge.cli"))
        and not e.source.startswith(("xlsr_edge.commands", "xlsr_edge.cli", "xlsr_edge.__main__"))
    ]
    assert bad == []


def test_every_command_module_registers_itself() -> None:
    import importlib

    from xlsr_edge.commands import COMMAND_MODULES

    files = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "common"}
    assert {m.rpartition(".")[2] for m in COMMAND_MODULES} == files
    for m in COMMAND_MODULES:
        assert callable(importlib.import_module(m).register), m


# -- the checker itself can fail --------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "xlsr_edge"
    for rel, text in files.items():
        f = pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return pkg


def test_checker_finds_a_cycle_and_ignores_function_level_and_type_checking(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path / "a",
        {
            "__init__.py": "",
            "one.py": "from xlsr_edge import two\n",
            "two.py": "from .three import x\n",
            "three.py": "import xlsr_edge.one\nx = 1\n",
        },
    )
    modules, edges = import_edges(pkg)
    cycle = find_cycle(modules, edges)
    assert cycle is not None and set(cycle) == {"xlsr_edge.one", "xlsr_edge.two", "xlsr_edge.three"}

    pkg = _write(
        tmp_path / "b",
        {
            "__init__.py": "",
            "one.py": "from xlsr_edge import two\n",
            "two.py": "def f():\n    import xlsr_edge.one\n",
            "three.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xlsr_edge import one\n",
        },
    )
    modules, edges = import_edges(pkg)
    assert find_cycle(modules, edges) is None


def test_checker_flags_runtime_reaching_for_export_even_inside_a_function(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "runtime/__init__.py": "",
            "runtime/x.py": "def f():\n    from xlsr_edge.export import pipeline\n",
            "precision/__init__.py": "",
            "precision/y.py": "from ..export import z\n",
            "export/__init__.py": "",
            "export/z.py": "",
            "export/pipeline.py": "",
        },
    )
    _, edges = import_edges(pkg)
    found = layering_violations(edges)
    assert any("xlsr_edge.runtime.x" in v and "xlsr_edge.export.pipeline" in v for v in found)
    assert any("xlsr_edge.precision.y" in v and "xlsr_edge.export.z" in v for v in found)


# -- size: modules <= 600 lines, functions <= 120 lines (issue 22) -----------------------------------------------

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def oversized(root: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions (methods, nested ones) over MAX_FUNCTION_LINES."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root.parent)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            out.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name}(): {n} lines")
    return out


def test_no_module_over_600_lines_and_no_function_over_120() -> None:
    assert oversized(PACKAGE) == []


def test_size_checker_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    pkg = _write(tmp_path, {"__init__.py": "", "big.py": f"def f():\n{body}\n", "long.py": "x = 1\n" * 601})
    found = oversized(pkg)
    assert any("big.py:1 f()" in v for v in found) and any("long.py: 601 lines" in v for v in found)


# -- decoders read logits and LM files only; xlsr_edge.lm stays on the light side (issue 22) ---------------------

# What xlsr_edge.decoders may import of the package, besides itself: it goes on a Jetson, and whoever builds
# BeamOptions (Recognizer, the commands) hands it the LM's tuned weights (xlsr_edge.lm.weights).
# the floor every layer may use; xlsr_edge.limits (numeric option checks) itself imports only constants and errors
FLOOR = ("xlsr_edge.constants", "xlsr_edge.errors")
DECODERS_MAY_IMPORT = (*FLOOR, "xlsr_edge.text", "xlsr_edge.limits")
LM_MUST_NOT_IMPORT = (
    "torch",
    "transformers",
    "xlsr_edge.export",
    "xlsr_edge.train",
    "xlsr_edge.runtime",
    "xlsr_edge.commands",
    "xlsr_edge.cli",
)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_imports_outside(edges: list[Edge], layer: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports of the package by modules under `layer` that are neither the layer itself nor `allowed`."""
    return [
        f"{e.source} (line {e.line}) imports {e.target}"
        for e in edges
        if _under(e.source, layer)
        and _under(e.target, "xlsr_edge")
        and not _under(e.target, layer)
        and not any(_under(e.target, a) for a in allowed)
    ]


def test_decoders_import_only_the_floor_and_themselves() -> None:
    _, edges = import_edges(PACKAGE)
    assert package_imports_outside(edges, "xlsr_edge.decoders", DECODERS_MAY_IMPORT) == []


def test_limits_imports_only_constants_and_errors() -> None:
    _, edges = import_edges(PACKAGE)
    assert any(e.target == "xlsr_edge.limits" for e in edges)  # it is used
    assert package_imports_outside(edges, "xlsr_edge.limits", FLOOR) == []


def test_lm_never_reaches_torch_or_the_export_and_training_side() -> None:
    _, edges = import_edges(PACKAGE)
    assert [
        f"{e.source} (line {e.line}) imports {e.target}"
        for e in edges
        if _under(e.source, "xlsr_edge.lm") and any(_under(e.target, b) for b in LM_MUST_NOT_IMPORT)
    ] == []


def test_decoders_rule_can_fail(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "bundle.py": "",
            "errors.py": "",
            "decoders/__init__.py": "from .beam import x\n",
            "decoders/beam.py": "from ..errors import E\ndef f():\n    from xlsr_edge.bundle import sha\nx = 1\n",
        },
    )
    _, edges = import_edges(pkg)
    found = package_imports_outside(edges, "xlsr_edge.decoders", DECODERS_MAY_IMPORT)
    assert len(found) == 1 and "xlsr_edge.decoders.beam (line 3) imports xlsr_edge.bundle" in found[0]


# -- issue 22: the runtime's modules, one batched-inference path, typed backend options -------------------------


def any_level_cycle(modules: set[str], edges: list[Edge], within: str) -> list[str] | None:
    """An import cycle among the modules under `within`, counting every import: inside functions and under
    `if TYPE_CHECKING:` too (a cycle there is a knot a reader has to untie, whenever it runs)."""
    scope = {m for m in modules if _under(m, within)}
    return find_cycle(scope, [replace(e, module_level=True) for e in edges if e.source in scope])


def test_no_import_cycle_at_any_level_among_runtime_modules() -> None:
    modules, edges = import_edges(PACKAGE)
    assert any_level_cycle(modules, edges, "xlsr_edge.runtime") is None


def test_scoring_imports_only_the_floor() -> None:
    _, edges = import_edges(PACKAGE)
    assert any(e.source.startswith("xlsr_edge.precision") and e.target == "xlsr_edge.scoring" for e in edges)
    assert package_imports_outside(edges, "xlsr_edge.scoring", (*FLOOR, "xlsr_edge.text")) == []


def _parse(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield module_name(path, root), path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, (ast.arg, ast.keyword)) and n.arg:
            out.add(n.arg)
    return out


def _is_zero(node: ast.AST) -> bool:
    v = getattr(node, "value", None)
    return (
        isinstance(node, ast.Constant) and isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
    )


MAX_PADDING_HOME = "xlsr_edge.constants"  # MAX_PADDING = 0.25
NO_MASK_RULE_HOME = "xlsr_edge.runtime.batching"  # padding_limit: no attention mask -> no padding


def padding_rule_copies(root: Path) -> list[str]:
    """The batch padding share written as a number (0.25 next to a *padding*/*mask* name: an assignment, a
    keyword, a default) outside constants, and the "no attention mask -> 0" rule (`x if ..mask.. else 0`)
    spelled out anywhere but runtime.batching."""
    out = []
    for name, _, tree in _parse(root):
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == 0.25 and name != MAX_PADDING_HOME:
                stmt = node
                while not isinstance(stmt, ast.stmt):
                    stmt = parents[stmt]
                scope = stmt.args if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) else stmt
                if any("padding" in n.lower() or "mask" in n.lower() for n in _names(scope)):
                    out.append(
                        f"{name}:{node.lineno} writes the padding share 0.25 (use constants.MAX_PADDING)"
                    )
            elif isinstance(node, ast.IfExp) and name != NO_MASK_RULE_HOME:
                if any("mask" in n.lower() for n in _names(node.test)) and (
                    _is_zero(node.body) or _is_zero(node.orelse)
                ):
                    out.append(
                        f"{name}:{node.lineno} spells out the no-mask padding rule (use batching.padding_limit)"
                    )
    return out


def test_the_padding_share_and_the_no_mask_rule_live_in_one_place_each() -> None:
    assert padding_rule_copies(PACKAGE) == []


# `== "onnxruntime"`: which backend runs is decided by runtime.backend_options alone (its typed options build the
# runner). Modules not yet moved onto BackendOptions, each with why:
BACKEND_DISPATCH_HOME = "xlsr_edge.runtime.backend_options"
BACKEND_DISPATCH_PENDING = {
    "xlsr_edge.optimize": "being written beside this rule (issue on `xlsr-edge optimize`)",
    "xlsr_edge.precision.convert": "reads a gate report's backend field for its wording, runs nothing",
}


def backend_name_comparisons(root: Path) -> list[str]:
    out = []
    for name, _, tree in _parse(root):
        if name == BACKEND_DISPATCH_HOME or any(_under(name, p) for p in BACKEND_DISPATCH_PENDING):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                sides = [node.left, *node.comparators]
                if any(isinstance(x, ast.Constant) and x.value == "onnxruntime" for x in sides):
                    out.append(f"{name}:{node.lineno} compares a backend with 'onnxruntime'")
    return out


def test_backend_dispatch_lives_in_backend_options() -> None:
    assert backend_name_comparisons(PACKAGE) == []


def test_issue_22_rules_can_fail(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "constants.py": "MAX_PADDING = 0.25\n",
            "runtime/__init__.py": "",
            # the old shape: each imports the other, one of them only inside a function
            "runtime/recognizer.py": "def f():\n    from xlsr_edge.runtime.multi import M\n",
            "runtime/multi.py": "from xlsr_edge.runtime.recognizer import R\n",
            "runtime/stream.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import stream2\n",
            "runtime/stream2.py": "def g():\n    from . import stream\n",
            "precision/gate.py": (
                "from xlsr_edge.measure.metrics import error_rates\n"
                "def run(info, uses_mask, backend):\n"
                "    max_padding = 0.25 if info.uses_attention_mask else 0.0\n"
                "    return bucket(x, 8, max_padding=0.25), backend == 'onnxruntime'\n"
            ),
            "measure/metrics.py": "",
            "scoring.py": "from xlsr_edge.runtime import x\n",
        },
    )
    modules, edges = import_edges(pkg)
    assert find_cycle(modules, edges) is None  # at module level there is none...
    cycle = any_level_cycle(modules, edges, "xlsr_edge.runtime")  # ...at any level there are two
    assert cycle is not None and set(cycle) in (
        {"xlsr_edge.runtime.recognizer", "xlsr_edge.runtime.multi"},
        {"xlsr_edge.runtime.stream", "xlsr_edge.runtime.stream2"},
    )
    assert any(
        "xlsr_edge.precision.gate" in v and "must not import xlsr_edge.measure" in v
        for v in layering_violations(edges)
    )
    assert package_imports_outside(edges, "xlsr_edge.scoring", (*FLOOR, "xlsr_edge.text")) != []
    copies = padding_rule_copies(pkg)
    assert sum("0.25" in c for c in copies) == 2 and sum("no-mask" in c for c in copies) == 1
    assert all("xlsr_edge.precision.gate" in c for c in copies)
    assert backend_name_comparisons(pkg) == [
        "xlsr_edge.precision.gate:4 compares a backend with 'onnxruntime'"
    ]


def library_output_violations(root: Path) -> list[str]:
    """Library modules (all but the CLI, its commands and module entry points) log through logging: no print()
    calls and no handlers installed (faster-whisper's rule: the application decides where output goes)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        name = path.relative_to(root).as_posix()
        if name == "cli.py" or name.startswith("commands/") or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        in_main = {
            id(n)
            for node in tree.body
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in in_main:
                continue
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if called in ("print", "addHandler", "basicConfig"):
                out.append(f"{rel}:{node.lineno} calls {called}()")
    return out


def test_library_code_logs_and_only_the_cli_installs_a_handler() -> None:
    assert library_output_violations(PACKAGE) == []


def test_library_output_rule_can_fail(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "lib.py": "import logging\ndef f():\n    print('x')\n    logging.basicConfig()\n",
            "tool.py": "def main():\n    pass\nif __name__ == '__main__':\n    print('ok')\n",
        },
    )
    found = library_output_violations(pkg)
    assert any("lib.py:3 calls print()" in v for v in found) and any("basicConfig" in v for v in found)
    assert not any("tool.py" in v for v in found)
