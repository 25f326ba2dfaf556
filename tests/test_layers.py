"""The package's layers hold: the run directory's modules import nothing of the trainer, no
module-level import cycle, no private helper imported across subpackages, and `dir()` of the
package lists its public API."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import induction_jax

PACKAGE = Path(induction_jax.__file__).parent
RUN_DIR_MODULES = ("rundir", "checkpoint", "arrays", "snapshots")
# The bottom modules they stand on: they import nothing of the package.
BOTTOM_MODULES = ("files", "gather")
TRAINER = ("training", "ensemble", "probes", "memory", "members", "distributed")

# Private helpers imported across subpackages (none today; issue 20 made the last two public):
# (importer, module imported from, name). Fixing one means removing it here; a new one fails.
KNOWN_PRIVATE_IMPORTS: set = set()


def _imported_in_fresh_python(module: str) -> set[str]:
    code = f"import sys, induction_jax.{module}; print('\\n'.join(sys.modules))"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


@pytest.mark.parametrize("module", RUN_DIR_MODULES + BOTTOM_MODULES)
def test_the_run_directory_modules_import_nothing_of_the_trainer(module):
    loaded = _imported_in_fresh_python(module)
    trainer = sorted(m for m in loaded if m in {f"induction_jax.{t}" for t in TRAINER})
    assert not trainer, f"importing induction_jax.{module} imports the trainer: {', '.join(trainer)}"
    if module in BOTTOM_MODULES:
        ours = sorted(m for m in loaded if m.startswith("induction_jax.") and m != f"induction_jax.{module}")
        assert not ours, f"induction_jax.{module} is a bottom module but imports {', '.join(ours)}"
    if module == "rundir":
        # What keeps `RunDir.check_config`'s import of checkpoint inside the method: commands that
        # only read a run's tables import rundir, and JAX / Orbax take seconds to import.
        heavy = sorted(m for m in loaded if m in ("jax", "orbax.checkpoint", "induction_jax.checkpoint"))
        assert not heavy, f"importing induction_jax.rundir imports {', '.join(heavy)}"


# ---- the import graph ----------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    """The (sub)package a module belongs to: itself for a package's __init__."""
    if module not in MODULES:
        return module.rsplit(".", 1)[0]
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str, node: ast.AST) -> list[tuple[str, str | None]]:
    """`(module imported, name or None)` for each induction_jax import an import statement makes."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.split(".")[0] == "induction_jax"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = _package_of(module).split(".")[: len(_package_of(module).split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "induction_jax":
        return []
    # `from induction_jax import rundir` imports the submodule; `from induction_jax import __version__` the package.
    return [(f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source, a.name) for a in node.names]


def _graph(top_level_only: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level, or anywhere). Importing
    `induction_jax.a.b` from outside `induction_jax.a` runs `induction_jax.a` first: an edge too."""
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            for target, _ in _imports(module, node):
                parts = target.split(".")
                for i in range(2, len(parts)):              # parent packages the importer is not in
                    parent = ".".join(parts[:i])
                    if parent in MODULES and not (module + ".").startswith(parent + "."):
                        graph[module].add(parent)
                if target in MODULES and target != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_found():
    graph = _graph()
    assert "induction_jax.files" in graph["induction_jax.rundir"]
    assert "induction_jax.rundir" in graph["induction_jax.snapshots"]
    assert "induction_jax.interop" in graph["induction_jax.interop.export"] or \
        "induction_jax.interop.transformer_lens" in graph["induction_jax.interop.export"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_module_level():
    cycles = _cycles(_graph())
    assert not cycles, "module-level import cycles among: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_run_directory_modules_have_no_cycle_even_inside_functions():
    """Among the run directory's modules no import is deferred into a function to dodge a cycle:
    with every import counted, wherever it stands, they are still acyclic."""
    ours = {f"induction_jax.{m}" for m in RUN_DIR_MODULES + BOTTOM_MODULES}
    graph = {m: targets & ours for m, targets in _graph(top_level_only=False).items() if m in ours}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (counting imports inside functions) among: " + \
        "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_helper_is_imported_across_subpackages():
    found = set()
    lines = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for source, name in _imports(module, node):
                if (name and name.startswith("_") and not name.startswith("__")
                        and _package_of(source) != _package_of(module)):
                    found.add((module, source, name))
                    lines[(module, source, name)] = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
    new = sorted(found - KNOWN_PRIVATE_IMPORTS)
    assert not new, "private helpers imported across subpackages (make them public where shared): " + \
        "; ".join(f"{lines[k]}: {k[2]} from {k[1]}" for k in new)
    fixed = sorted(KNOWN_PRIVATE_IMPORTS - found)
    assert not fixed, f"fixed, so remove from KNOWN_PRIVATE_IMPORTS: {fixed}"
    if found:
        pytest.xfail("private helpers still imported across subpackages (files owned elsewhere, issue 20): " +
                     "; ".join(f"{lines[k]}: {k[2]} from {k[1]}" for k in sorted(found)))


@pytest.mark.parametrize("flags", [{}, {"d_mlp": 24}, {"layer_norm": True}, {"d_mlp": 8, "layer_norm": True,
                                                                              "n_layers": 3, "n_heads": 2}])
def test_the_snapshot_size_snapshots_computes_itself_is_the_models(flags):
    """`snapshots` sizes a snapshot without the trainer's memory estimates: it must count what
    the model declares."""
    import jax
    import numpy as np

    from induction_jax import snapshots
    from induction_jax.config import ModelConfig
    from induction_jax.model import init_params

    m = ModelConfig(**{"d_vocab": 12, "n_ctx": 10, "d_model": 8, "n_heads": 4, **flags})
    shapes = jax.eval_shape(lambda k: init_params(m, k), jax.random.PRNGKey(0))
    assert snapshots.n_floats(m) == sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(shapes))


# ---- the package's public API ----------------------------------------------------------------
def test_dir_of_the_package_lists_the_public_api_and_each_name_resolves():
    names = dir(induction_jax)
    missing = [n for n in induction_jax.__all__ if n not in names]
    assert not missing, f"dir(induction_jax) lacks {missing}"
    assert "__version__" in names and not [n for n in names if n.startswith("_") and not n.startswith("__")]
    for name in induction_jax.__all__:
        assert getattr(induction_jax, name) is not None, name


def test_dir_of_the_package_imports_no_jax():
    code = ("import sys, induction_jax as ij; names = dir(ij); "
            "assert 'train' in names and 'RunConfig' in names, names; "
            "assert 'jax' not in sys.modules and 'numpy' not in sys.modules, 'dir() imported JAX or numpy'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
