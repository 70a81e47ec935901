"""The package's shape: no import cycle between its modules (imports inside functions count too, and so do modules
loaded by `importlib.import_module`: a string literal naming a module, or f"{__name__}.{name}" for a registry of
submodules); no module over 400 lines; command functions only in cxr_fast/cli; every fastai callback at module level."""
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
    return {m for m in found | imported_by_name(path, name, modules) if m in modules and m != name}


def imported_by_name(path, name, modules):
    """Modules loaded through importlib in `path`: any string literal naming a package module (the CLI's command
    table, `__init__`'s lazy exports), and every submodule for `import_module(f"{__name__}.{x}")` (a registry)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if "import_module" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
            {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}:
        return set()
    found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.FormattedValue) \
                and getattr(node.values[0].value, "id", None) == "__name__":
            found |= {m for m in modules if m.startswith(name + ".")}
    return found


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
    assert "cxr_fast.models.folder" in graph["cxr_fast.inference.predictor"]
    assert "cxr_fast.data.rows" in graph["cxr_fast.data.sources.coronahack"]


def test_the_graph_sees_modules_loaded_by_name():
    graph = import_graph()
    assert "cxr_fast.data.sources.coronahack" in graph["cxr_fast.data.sources"]  # f"{__name__}.{name}"
    assert "cxr_fast.cli.train" in graph["cxr_fast.cli"]  # the command table
    assert "cxr_fast.apps.audit.core" in graph["cxr_fast"]  # the lazy exports


def test_a_cycle_through_a_registry_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_model_directory_has_one_owner():
    graph = import_graph()
    assert "cxr_fast.inference.predictor" not in graph["cxr_fast.models.folder"] and "cxr_fast.models.folder" not in graph["cxr_fast.models.registry"]


MAX_LINES = 400
KNOWN_OVER = set()  # modules being split (issue #21) would be named here, each removed when split
KNOWN_NESTED_CALLBACKS = set()  # being moved to module level (issue #21), as KNOWN_OVER


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def rel(path):
    return path.relative_to(PACKAGE.parent).as_posix()


def test_no_module_over_400_lines():
    lines = {rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in package_files()}
    over = {p: n for p, n in lines.items() if n > MAX_LINES and p not in KNOWN_OVER}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
    assert all(p in lines for p in KNOWN_OVER), "KNOWN_OVER names a module that no longer exists"


def test_bench_scripts_import_without_editing_sys_path():
    "bench/ scripts reach the recipes through cxr_fast.apps.recipes.recipe_module and each other as siblings."
    bench = PACKAGE.parent / "bench"
    editing = [p.name for p in bench.glob("*.py") if "sys.path.insert" in p.read_text(encoding="utf-8")]
    assert not editing, f"bench scripts that edit sys.path: {editing}"


def test_command_functions_live_in_the_cli():
    outside = [f"{rel(p)}:{node.name}" for p in package_files() if PACKAGE / "cli" not in p.parents
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith("_command")]
    assert not outside, f"command functions outside cxr_fast/cli: {outside}"


def base_names(cls):
    return {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases}


def callback_names(trees):
    """Names of fastai callback classes: fastai's (`...Callback`, or imported from fastai.callback or
    fastai.distributed), and the package's classes deriving from one, to a fixed point."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("fastai.callback", "fastai.distributed")):
                names |= {a.asname or a.name for a in node.names if a.name[:1].isupper()}
    classes = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    while True:
        more = {c.name for c in classes if c.name not in names
                and any(b in names or b.endswith("Callback") for b in base_names(c))}
        if not more: return names
        names |= more


def nested_callbacks(path, names):
    "Callback classes defined inside a function of `path`."
    found = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [c.name for c in ast.walk(fn) if isinstance(c, ast.ClassDef)
                      and any(b in names or b.endswith("Callback") for b in base_names(c))]
    return found


def test_the_callback_check_sees_a_nested_callback(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from fastai.callback.core import Callback\n"
                      "class Top(Callback): pass\n"
                      "def make():\n    class Inner(Top): pass\n    return Inner()\n")
    names = callback_names([ast.parse(source.read_text())])
    assert "Top" in names and nested_callbacks(source, names) == ["Inner"]


def test_every_callback_is_defined_at_module_level():
    files = package_files()
    names = callback_names([ast.parse(p.read_text(encoding="utf-8")) for p in files])
    nested = {rel(p): found for p in files if (found := nested_callbacks(p, names))}
    assert not {p: f for p, f in nested.items() if p not in KNOWN_NESTED_CALLBACKS}, f"callbacks inside functions: {nested}"
