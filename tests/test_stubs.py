"""The hand-written stub _core.pyi matches the compiled module: the same names both ways
(module level and in each class), the same read/write-ness of attributes, and, for each
pybind11 function, the same parameters (names, order, defaults) and types as the
signature pybind11 writes into the docstring."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, Optional, Union

import pytest

import capsched
from capsched import _core

_FuncDef = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def _stub_tree() -> ast.Module:
    stub = Path(capsched.__file__).with_name("_core.pyi")
    return ast.parse(stub.read_text())


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Private type aliases of the stub (``_StepTuple = tuple[...]``) -> their text."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.unparse(node.value)
    return out


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _stub_names(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.add(node.name)
    return out


def _is_property(f: _FuncDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in f.decorator_list)


def _members(cls: ast.ClassDef) -> tuple[set[str], set[str], dict[str, _FuncDef]]:
    """(attributes, read-only properties, methods) a stub class declares."""
    attrs: set[str] = set()
    props: set[str] = set()
    methods: dict[str, _FuncDef] = {}
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _is_property(item):
                props.add(item.name)
            else:
                methods[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            attrs.add(item.target.id)
    return attrs, props, methods


def _public(cls: type) -> set[str]:
    """Names a compiled class defines itself: public ones, __init__ and __len__."""
    return {n for n in vars(cls) if not n.startswith("_") or n in ("__init__", "__len__")}


# ------------------------------------------------------------------ names, both ways


def test_module_names_match_stub() -> None:
    tree = _stub_tree()
    module = {n for n in dir(_core) if not n.startswith("_")}
    stub = _stub_names(tree)
    assert stub - module == set(), "in _core.pyi but not in the compiled module"
    assert module - stub == set(), "in the compiled module but not in _core.pyi"


def test_every_class_is_checked() -> None:
    # The per-class tests below are parametrized by the stub's classes; make sure that
    # is every class the module has.
    real = {n for n in dir(_core) if isinstance(getattr(_core, n), type) and not n.startswith("_")}
    assert set(_classes(_stub_tree())) == real


@pytest.mark.parametrize("cls_name", sorted(_classes(_stub_tree())))
def test_class_members_match_stub(cls_name: str) -> None:
    attrs, props, methods = _members(_classes(_stub_tree())[cls_name])
    real_cls = getattr(_core, cls_name)
    real = _public(real_cls)
    stub = attrs | props | set(methods)
    assert stub - real == set(), f"{cls_name}: in _core.pyi but not in the compiled class"
    assert real - stub == set(), f"{cls_name}: in the compiled class but not in _core.pyi"
    for name in attrs | props:
        descr = vars(real_cls)[name]
        assert isinstance(descr, property), f"{cls_name}.{name} is not a property in the module"
        if name in attrs:  # a plain annotated attribute in the stub: readable and writable
            assert descr.fset is not None, f"{cls_name}.{name} is read-only in the module; the stub lets it be set"
        else:  # a @property in the stub: read-only
            assert descr.fset is None, f"{cls_name}.{name} is settable in the module; the stub says read-only"
    for name in methods:
        assert callable(vars(real_cls)[name]), f"{cls_name}.{name}"


# ------------------------------------------------------------------ signatures

# pybind11 (3.x, and the 2.x spellings) writes parameter and return types in its own
# words; these turn them into the stub's spelling.
_DOC_TYPE_REWRITES = [
    (r"typing\.SupportsInt \| typing\.SupportsIndex", "int"),
    (r"typing\.SupportsFloat \| typing\.SupportsIndex", "float"),
    (r"typing\.Annotated\[numpy\.typing\.ArrayLike, numpy\.(\w+)\]", r"npt.NDArray[np.\1]"),
    (r"numpy\.typing\.NDArray\[numpy\.(\w+)\]", r"npt.NDArray[np.\1]"),
    (r"numpy\.ndarray\[numpy\.(\w+)\]", r"npt.NDArray[np.\1]"),
    (r"collections\.abc\.Sequence\[", "list["),
    (r"\bList\[", "list["),
    (r"\bTuple\[", "tuple["),
    (r"capsched\._core\.", ""),
]


def _norm_doc_type(t: str) -> str:
    for pat, rep in _DOC_TYPE_REWRITES:
        t = re.sub(pat, rep, t)
    return t.strip()


def _split_params(text: str) -> list[str]:
    """Split a parameter list at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _doc_signature(fn: Any, name: str) -> Optional[tuple[list[tuple[str, str, bool]], str]]:
    """([(param, type, has_default)], return type) from pybind11's docstring signature,
    ``self`` left out; None when the docstring has none (a raw CPython method)."""
    doc = (getattr(fn, "__doc__", None) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    m = re.fullmatch(rf"{re.escape(name)}\((.*)\) -> (.+)", first)
    if not m:
        return None
    params = []
    for p in _split_params(m.group(1)):
        pname, _, rest = p.partition(":")
        ptype, eq, _default = rest.partition(" = ")
        params.append((pname.strip(), _norm_doc_type(ptype), bool(eq)))
    assert params and params[0][0] == "self", first
    return params[1:], _norm_doc_type(m.group(2))


def _stub_signature(f: _FuncDef) -> tuple[list[tuple[str, str, bool]], str, bool]:
    """([(param, type, has_default)], return type, all positional-only), ``self`` left out."""
    a = f.args
    positional = a.posonlyargs + a.args
    defaults = [False] * (len(positional) - len(a.defaults)) + [True] * len(a.defaults)
    params = [
        (arg.arg, ast.unparse(arg.annotation) if arg.annotation else "", d)
        for arg, d in zip(positional, defaults)
    ]
    assert params and params[0][0] == "self"
    assert not a.kwonlyargs and a.vararg is None and a.kwarg is None, f.name
    posonly = len(a.args) == 0  # self and everything before a final "/"
    return params[1:], ast.unparse(f.returns) if f.returns else "", posonly


def _origin(t: str, aliases: dict[str, str]) -> str:
    t = aliases.get(t, t)
    return t.split("[", 1)[0]


def _same_type(stub_t: str, doc_t: str, aliases: dict[str, str]) -> bool:
    if doc_t in ("dict", "tuple", "list"):  # pybind11 gives the bare container
        return _origin(stub_t, aliases) == doc_t
    return stub_t == doc_t


def _methods() -> list[tuple[str, str]]:
    return [
        (cls_name, m)
        for cls_name, cls in sorted(_classes(_stub_tree()).items())
        for m in sorted(_members(cls)[2])
    ]


@pytest.mark.parametrize(("cls_name", "method"), _methods())
def test_method_signature_matches_stub(cls_name: str, method: str) -> None:
    tree = _stub_tree()
    aliases = _aliases(tree)
    stub_params, stub_ret, stub_posonly = _stub_signature(_members(_classes(tree)[cls_name])[2][method])
    fn = vars(getattr(_core, cls_name))[method]
    doc = _doc_signature(fn, method)
    if doc is None:
        # A method written against the CPython API (the fast paths): no types in its
        # docstring, but a text signature (names, defaults, positional-only).
        sig = inspect.signature(fn)
        real = list(sig.parameters.values())[1:]
        assert [p[0] for p in stub_params] == [p.name for p in real], f"{cls_name}.{method}: parameter names"
        assert [p[2] for p in stub_params] == [p.default is not p.empty for p in real], f"{cls_name}.{method}: defaults"
        if all(p.kind is p.POSITIONAL_ONLY for p in real):
            assert stub_posonly, f"{cls_name}.{method} takes positional arguments only; mark them with / in the stub"
        return
    doc_params, doc_ret = doc
    assert [p[0] for p in stub_params] == [p[0] for p in doc_params], f"{cls_name}.{method}: parameter names"
    assert [p[2] for p in stub_params] == [p[2] for p in doc_params], f"{cls_name}.{method}: defaults"
    for (pname, stub_t, _), (_, doc_t, _) in zip(stub_params, doc_params):
        assert _same_type(stub_t, doc_t, aliases), f"{cls_name}.{method}: type of {pname}: stub {stub_t}, module {doc_t}"
    assert not stub_posonly or not stub_params, f"{cls_name}.{method} takes keywords; the stub says positional-only"
    assert _same_type(stub_ret, doc_ret, aliases), f"{cls_name}.{method}: return type: stub {stub_ret}, module {doc_ret}"


def test_signature_check_catches_a_wrong_stub() -> None:
    # The comparison above is not vacuous: a stub with a renamed parameter, a lost
    # default or a wrong type differs from pybind11's signature.
    fn = vars(_core.IndexedHeap)["push"]
    doc = _doc_signature(fn, "push")
    assert doc is not None
    right = ast.parse("def push(self, handle: int, key: float, seq: int = 0) -> None: ...").body[0]
    assert isinstance(right, ast.FunctionDef)
    assert _stub_signature(right)[0] == doc[0]
    for wrong in (
        "def push(self, h: int, key: float, seq: int = 0) -> None: ...",
        "def push(self, handle: int, key: float, seq: int) -> None: ...",
        "def push(self, handle: int, key: int, seq: int = 0) -> None: ...",
    ):
        f = ast.parse(wrong).body[0]
        assert isinstance(f, ast.FunctionDef)
        assert _stub_signature(f)[0] != doc[0], wrong
