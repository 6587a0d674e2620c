"""The hand-written stub _core.pyi lists exactly the names the compiled module has."""

from __future__ import annotations

import ast
from pathlib import Path

import capsched
from capsched import _core


def _stub_names() -> dict[str, set[str]]:
    stub = Path(capsched.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[""].add(node.name)
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            out[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[""].add(node.target.id)
    return out


def _public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_") or n in ("__init__", "__len__")}


def test_stub_matches_module() -> None:
    stub = _stub_names()
    module = {n for n in dir(_core) if not n.startswith("_")}
    assert stub[""] == module
    for cls in ("IndexedHeap", "CoreConfig", "Core"):
        real = {n for n in _public(getattr(_core, cls)) if n in vars(getattr(_core, cls))}
        assert stub[cls] == real, cls
