"""The house: imports run app/ -> viz/ -> core/ (bench/ may use all three), with no circle
among the project's modules. Read from the source with ast, so imports inside functions count."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "viz", "app", "bench")
# What each top-level package may import from the project.
ALLOWED = {"core": {"core"}, "viz": {"viz", "core"}, "app": {"app", "viz", "core"},
           "bench": {"bench", "core", "viz", "app"}}


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its source)."""
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges[m] |= {t for t in names if t in mods and t != m and not m.startswith(t + ".")}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    edges = imports(project_modules())
    assert "core.backends.vllm" in edges["core.backends"]  # imported inside get_backend()
    assert "core.esamp.fusion" in edges["core.esamp.steerer"]  # from .fusion import ...
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_project_modules():
    assert circles(imports(project_modules())) == []


def test_imports_follow_the_layering():
    wrong = [f"{m} imports {t}" for m, ts in imports(project_modules()).items() for t in ts
             if t.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert wrong == []


def test_core_uses_no_streamlit_and_no_plotting_and_viz_loads_no_llm():
    mods = project_modules()
    for m, f in mods.items():
        tops = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops.add(node.module.split(".")[0])
        if m.startswith("core"):
            assert not tops & {"streamlit", "plotly", "matplotlib", "umap"}, m
        if m.startswith("viz"):
            assert not tops & {"streamlit", "transformers", "vllm"}, m


MAX_FUNCTION_LINES = 60  # the engine and the pages: a longer function is two ideas


def test_no_function_in_core_or_app_is_longer_than_sixty_lines():
    long = []
    for name, f in project_modules().items():
        if name.split(".")[0] not in ("core", "app"):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
