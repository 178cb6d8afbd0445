"""The import graph of ``ssn_norm``: no circle, and the core's floors.

Every ``import`` statement of the package counts, at module level or inside
a function (a deferred import is still a dependency).  Importing
``a.b.c`` from outside ``a.b`` runs ``a.b``'s ``__init__`` too, so that
edge is added as well; the compiled extension ``ssn_norm._ext`` is a leaf.
With no circle, every import runs down one order of the modules: none runs
back up.  The pure-PyTorch core keeps its floors: ``ops`` imports nothing
of the package above it, ``layers`` only ``ops``, and
``ssn_norm.distributed`` (running statistics across ranks) no layer.
"""
import ast
import os.path as osp
from pathlib import Path
from typing import Dict, List, Set

from _helpers import REPO

PACKAGE = 'ssn_norm'


def modules() -> Dict[str, Path]:
    """``{dotted name: file}`` of every Python module of the package, and
    its compiled extensions (``ssn_norm._ext``: no file to read)."""
    root = Path(REPO)
    found = {}
    for path in (root / PACKAGE).rglob('*.py'):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        found['.'.join(parts)] = path
    for path in (root / PACKAGE).glob('*.so'):
        found[f'{PACKAGE}.{path.name.split(".")[0]}'] = None
    return found


def _targets(name: str, path: Path, node: ast.AST) -> List[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ''
    if node.level:
        parts = name.split('.')
        if path.name != '__init__.py':
            parts.pop()
        parts = parts[:len(parts) - node.level + 1]
        base = '.'.join(parts + ([node.module] if node.module else []))
    # ``from pkg import name``: the module pkg.name if there is one, else
    # pkg itself (the name is an attribute of it); graph() shortens it.
    return [f'{base}.{alias.name}' for alias in node.names]


def graph() -> Dict[str, Set[str]]:
    """``{module: modules it imports}``, within the package."""
    found = modules()
    edges = {name: set() for name in found}
    for name, path in found.items():
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(name, path, node):
                while target not in found and '.' in target:
                    target = target.rsplit('.', 1)[0]
                if target not in found or target == name:
                    continue
                edges[name].add(target)
                parent = target
                while '.' in parent:
                    parent = parent.rsplit('.', 1)[0]
                    if not (name + '.').startswith(parent + '.'):
                        edges[name].add(parent)
    return edges


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(edges: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def floors(edges: Dict[str, Set[str]]) -> Dict[str, int]:
    """Each module's floor: 0 for a module importing none of the package,
    else one above the highest floor it imports (needs no circle)."""
    level: Dict[str, int] = {}

    def floor(node):
        if node not in level:
            level[node] = 1 + max((floor(n) for n in edges[node]), default=-1)
        return level[node]

    for node in edges:
        floor(node)
    return level


def test_the_graph_sees_deferred_and_relative_imports():
    edges = graph()
    assert f'{PACKAGE}.ops.moments' in edges[
        f'{PACKAGE}.layers.switchable_norm']
    # compute_batch_stats imports mmengine's ProgressBar inside a function;
    # the package's own deferred imports count the same way.
    assert f'{PACKAGE}.version' in edges[f'{PACKAGE}.deploy']
    assert f'{PACKAGE}._ext' in edges[f'{PACKAGE}.ops.providers']


def test_no_circle_so_no_import_runs_back_up():
    edges = graph()
    assert circles(edges) == []
    assert max(floors(edges).values()) > 0


def test_the_core_keeps_its_floors():
    edges = graph()
    core = f'{PACKAGE}.ops'
    for name, targets in edges.items():
        if name == core or name.startswith(core + '.'):
            outside = {
                t
                for t in targets
                if not (t + '.').startswith(core + '.') and t not in (
                    PACKAGE, f'{PACKAGE}._ext')
            }
            assert not outside, (name, outside)
        if name.startswith(f'{PACKAGE}.layers'):
            above = {
                t
                for t in targets if not t.startswith((f'{PACKAGE}.layers',
                                                      core, PACKAGE + '.ops'))
            }
            assert not above, (name, above)
    below = reachable(edges, f'{PACKAGE}.distributed')
    assert not {t for t in below if t.startswith(f'{PACKAGE}.layers')}, below


def test_a_new_circle_would_be_found(tmp_path):
    """The check itself: a circle in a made-up graph is reported."""
    edges = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert circles(edges) == [['a', 'b', 'c']]
    assert osp.isdir(REPO)
