"""The package's shape: no import cycle between its modules (imports inside functions count too)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_fast"


def module_name(path):
    "cxr_fast.x.y for PACKAGE/x/y.py (a package's __init__.py is the package)."
    parts = ("cxr_fast", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path, modules):
    "The package modules `path` imports, at module level or inside functions."
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import x` names a submodule; `from .x import y` names module x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph():
    "{module: modules it imports} over every module of the package."
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: internal_imports(p, set(files)) for m, p in files.items()}


def cycles(graph):
    "The strongly connected components with more than one module (Tarjan), each sorted."
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v: break
            if len(component) > 1: out.append(sorted(component))

    for v in sorted(graph):
        if v not in index: visit(v)
    return out


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "cxr_fast.models.folder" in graph["cxr_fast.inference.predictor"] and "cxr_fast.data.table" in graph["cxr_fast.data.sources.coronahack"]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_model_directory_has_one_owner():
    graph = import_graph()
    assert "cxr_fast.inference.predictor" not in graph["cxr_fast.models.folder"] and "cxr_fast.models.folder" not in graph["cxr_fast.models.registry"]
