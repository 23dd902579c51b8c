"""No import cycle among ``gen_models`` modules, not even through an import inside a function.

Every module's imports are read with :mod:`ast` (top level and function bodies, relative imports
resolved); ``from P import x`` counts as importing ``P.x`` when that is a module, else ``P``. The
family registry's ``importlib.import_module`` by name is not an import statement and is not seen.
"""

from __future__ import annotations

import ast
import pathlib

import gen_models

ROOT = pathlib.Path(gen_models.__file__).parent
PACKAGE = "gen_models"


def _modules() -> dict[str, pathlib.Path]:
  """``{dotted name: file}`` of every module and package of gen_models."""
  found = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  return found


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The gen_models modules that module ``name`` (at ``path``) imports anywhere in its body."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: up node.level - 1 packages from this module's package.
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in modules:  # `import gen_models.x.y` where y is an attribute.
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def import_graph() -> dict[str, set[str]]:
  """``{module: modules it imports}`` over every gen_models module."""
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle ``[a, b, …, a]`` per strongly connected component with more than one module."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v: str) -> None:  # Tarjan's algorithm.
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
        if w == v:
          break
      if len(component) > 1:
        cycles.append(_cycle_in(graph, component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return cycles


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
  """A shortest path from the component's first module back to itself, within the component."""
  start = min(component)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v] & component):
        if w == start:
          return paths[v] + [start]
        if w not in paths:
          paths[w] = paths[v] + [w]
          nxt.append(w)
    frontier = nxt
  raise AssertionError(f"no cycle through {start}")


def test_the_graph_is_read():
  graph = import_graph()
  assert "gen_models.trainer" in graph and "gen_models.data.members" in graph
  assert {"gen_models.population", "gen_models.checkpointing"} <= graph["gen_models.trainer"]


def test_no_import_cycle():
  cycles = find_cycles(import_graph())
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_in_functions_and_relative_imports_are_read(tmp_path):
  files = {
    "pkg/__init__.py": "from .a import f\n",
    "pkg/a.py": "import os\n\ndef f():\n  from . import b\n  from .sub.c import g\n",
    "pkg/b.py": "from pkg.sub import c as c_lib\nfrom pkg.a import f\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/c.py": "from .. import b\nfrom ..sub import d\nimport pkg.a.f\n",
  }
  modules = {}
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
    dotted = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    modules[dotted] = tmp_path / name
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  assert graph == {
    "pkg": {"pkg.a"},
    "pkg.a": {"pkg.b", "pkg.sub.c"},
    "pkg.b": {"pkg.sub.c", "pkg.a"},
    "pkg.sub": set(),
    "pkg.sub.c": {"pkg.b", "pkg.sub", "pkg.a"},
  }
  assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_cycle_is_found_and_printed():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
  assert find_cycles(graph) == [["a", "b", "c", "a"]]
