"""Importing netspec changes nothing in the process; the package's imports form no cycle; spec code stays readable.

The process settings of the compiled kernels (OpenMP wait policy, threads per
MPI rank, malloc thresholds: netspec.runtime) are applied when the first model
is built, never on import; validating a spec or printing the schema never loads
the kernel seam at all.
"""
import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "netspec"

PROBE = textwrap.dedent("""
    import contextlib, io, json, os, sys
    import numpy
    from threadpoolctl import threadpool_info
    def pools():
        return sorted((p["internal_api"], p["num_threads"]) for p in threadpool_info())
    env, threads = dict(os.environ), pools()
    import netspec, netspec.spec
    after_import = dict(os.environ) == env and pools() == threads
    from netspec.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        codes = [main(["validate", sys.argv[1]]), main(["schema"])]
    print(json.dumps({"after_import": after_import, "codes": codes,
                      "env_same": dict(os.environ) == env, "threads_same": pools() == threads,
                      "kernels": "netspec.kernels" in sys.modules, "runtime": "netspec.runtime" in sys.modules,
                      "compiled": sorted(m for m in sys.modules if m.startswith("netspec.kernels._compiled"))}))
    netspec.compile(sys.argv[1])
    print(json.dumps({"kernels": "netspec.kernels" in sys.modules,
                      "runtime_applied": netspec.runtime.applied() is not None}))
""")


def test_import_validate_and_schema_change_nothing(repo):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(repo / "specs" / "resnet_fashion.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = map(json.loads, done.stdout.splitlines())
    assert before == {"after_import": True, "codes": [0, 0], "env_same": True, "threads_same": True,
                      "kernels": False, "runtime": False, "compiled": []}
    assert after == {"kernels": True, "runtime_applied": True}  # building a model applies them


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module, node, is_package, known):
    """The netspec modules an import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    found = set()
    for alias in node.names:
        if f"{origin}.{alias.name}" in known:
            found.add(f"{origin}.{alias.name}")
        elif origin in known:
            found.add(origin)
    return found


def module_level_imports():
    """{module: netspec modules it imports when it is imported} (statements outside functions)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(stmt):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    deps |= _imported(module, node, path.name == "__init__.py", files)
        # (a submodule's parent package is being imported already: that edge is no cycle)
        graph[module] = {d for d in deps if d != module}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                cycle = visit(d)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


# imported where they are used, because netspec works without them (or off Linux, fcntl)
OPTIONAL = {"onnx", "PIL", "mpi4py", "matplotlib", "sklearn", "fcntl", "optuna", "sqlalchemy"}


def test_only_optional_dependencies_are_imported_inside_functions():
    late = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
            for node in ast.walk(stmt) if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) else ():
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                else:
                    continue
                late += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {n}" for n in names
                         if n.split(".")[0] not in OPTIONAL]
    assert late == []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_module_level_imports_have_no_cycle():
    graph = module_level_imports()
    assert "netspec.compiler" in graph["netspec.runner"]  # the parser sees relative imports
    assert find_cycle(graph) is None


def test_spec_functions_take_at_most_six_parameters():
    """The block expander passes a context (what one layer list shares) instead of long argument lists."""
    long = []
    for path in sorted((PACKAGE / "spec").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                if n > 6:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {n} parameters")
    assert long == []
