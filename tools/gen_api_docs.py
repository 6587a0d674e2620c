#!/usr/bin/env python3
"""Write docs/api.md, capsched's API reference, from the package's own docstrings.

It imports capsched, walks the top-level ``capsched.__all__`` and every public submodule
(each module's ``__all__``; submodules whose name has a part starting with ``_`` are
private), and writes one markdown file: for each module its docstring, then for each public
name its signature and docstring, classes with their public methods and properties. Each
object is documented once, in the module that defines it; the top-level table links there.

The output depends only on the source (signatures use the annotations as written, default
values and constants are taken from the source text where they are literals), so it is the
same on every supported Python; ``tests/test_api_docs.py`` checks that regenerating gives
exactly the committed file and that every public class, function, method, property and
module has a docstring.

    python tools/gen_api_docs.py            # rewrite docs/api.md
    python tools/gen_api_docs.py --check    # exit 1 if docs/api.md is out of date
    python tools/gen_api_docs.py --missing  # list public names without a docstring
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "api.md"
PACKAGE = "capsched"
#: Signatures longer than this are written one parameter per line.
LINE_WIDTH = 88
#: Default values and constants whose source text is longer than this are shortened.
MAX_VALUE_CHARS = 100


class ModuleImportError(ImportError):
    """A public submodule could not be imported (usually an optional extra is missing)."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"cannot import {module}: {cause}")
        self.module = module
        self.cause = cause


# --------------------------------------------------------------------------- walking


def public_modules() -> list[types.ModuleType]:
    """The package and its public submodules, imported, in a stable order (the package
    first, then submodules by dotted name).

    Raises:
        ModuleImportError: a submodule's import failed (its ``module`` names it).
    """
    pkg = importlib.import_module(PACKAGE)
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, PACKAGE + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    modules = [pkg]
    for name in sorted(names):
        try:
            module = importlib.import_module(name)
            for public in public_names(module):  # (a name may import an extra lazily)
                getattr(module, public)
        except ImportError as exc:
            raise ModuleImportError(name, exc) from exc
        modules.append(module)
    return modules


def public_names(module: types.ModuleType) -> list[str]:
    """The module's ``__all__`` in its own order, or its public names defined in it."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = sorted(
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
    return list(names)


def kind_of(obj: Any) -> str:
    """``module``, ``class``, ``function`` or ``data`` (constants and type aliases)."""
    if inspect.ismodule(obj):
        return "module"
    if typing.get_origin(obj) is not None or isinstance(obj, typing.TypeVar):
        return "data"
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def home_module(obj: Any, fallback: str) -> str:
    """The capsched module that defines ``obj`` (``fallback`` for data and foreign objects)."""
    if kind_of(obj) in ("class", "function"):
        mod = getattr(obj, "__module__", None)
        if isinstance(mod, str) and (mod == PACKAGE or mod.startswith(PACKAGE + ".")):
            return mod
    return fallback


def class_members(cls: type) -> list[tuple[str, str, Any]]:
    """Public methods and properties defined in ``cls`` itself: ``(name, kind, object)``
    with kind ``method``, ``classmethod``, ``staticmethod`` or ``property``."""
    out: list[tuple[str, str, Any]] = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            out.append((name, "property", raw))
        elif isinstance(raw, classmethod):
            out.append((name, "classmethod", raw.__func__))
        elif isinstance(raw, staticmethod):
            out.append((name, "staticmethod", raw.__func__))
        elif inspect.isfunction(raw) or inspect.isroutine(raw):
            out.append((name, "method", raw))
    return out


# --------------------------------------------------------------------------- source text


_SOURCE_CACHE: dict[str, Optional[ast.Module]] = {}


def _module_ast(module_name: str) -> tuple[Optional[ast.Module], str]:
    module = sys.modules.get(module_name)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        source = ""
    if module_name not in _SOURCE_CACHE:
        _SOURCE_CACHE[module_name] = ast.parse(source) if source else None
    return _SOURCE_CACHE[module_name], source


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 4].rstrip() + " ..."
    return text


def constant_source(module_name: str, name: str) -> tuple[Optional[str], str]:
    """The source text of ``name``'s module-level assignment in ``module_name`` and its
    ``#:`` doc comment (``(None, "")`` when the module does not assign it)."""
    tree, source = _module_ast(module_name)
    if tree is None:
        return None, ""
    lines = source.splitlines()
    for node in tree.body:
        targets: list[ast.expr] = []
        value: Optional[ast.expr] = None
        if isinstance(node, ast.Assign):
            targets, value = list(node.targets), node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is None or not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        segment = ast.get_source_segment(source, value) or ""
        comment: list[str] = []
        i = node.lineno - 2
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        return _shorten(segment), " ".join(comment)
    return None, ""


def _default_sources(func: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> source text of its default, read from the function's source."""
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return {}
    text = textwrap.dedent(source)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            out: dict[str, str] = {}
            positional = args.posonlyargs + args.args
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
                out[arg.arg] = ast.get_source_segment(text, default) or ""
            for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults):
                if kw_default is not None:
                    out[arg.arg] = ast.get_source_segment(text, kw_default) or ""
            return out
    return {}


# --------------------------------------------------------------------------- signatures


def _annotation(ann: Any) -> str:
    if isinstance(ann, str):
        text: str = ann
        if "Literal[" not in text:  # forward references written as strings: drop the quotes
            text = re.sub(r"'([^']*)'|\"([^\"]*)\"", lambda m: m.group(1) or m.group(2) or "", text)
        return text
    if isinstance(ann, type):
        return ann.__name__ if ann.__module__ == "builtins" else f"{ann.__module__}.{ann.__qualname__}"
    return inspect.formatannotation(ann)


def _default(value: Any, source: Optional[str]) -> str:
    if source:
        return _shorten(source)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if inspect.isroutine(value) or inspect.isclass(value):
        mod = getattr(value, "__module__", None) or ""
        return f"{mod}.{value.__qualname__}" if mod and mod != "builtins" else value.__qualname__
    if value is os.environ:
        return "os.environ"
    text = repr(value)
    if " at 0x" in text:
        text = f"<{type(value).__name__}>"
    return _shorten(text)


def _dataclass_defaults(cls: type) -> dict[str, str]:
    """Field name -> source text of its default in the class body (for dataclasses)."""
    tree, source = _module_ast(cls.__module__)
    out: dict[str, str] = {}
    if tree is None:
        return out
    for klass in [c for c in cls.__mro__ if dataclasses.is_dataclass(c)][::-1]:
        tree_k, source_k = _module_ast(klass.__module__)
        if tree_k is None:
            continue
        for node in tree_k.body:
            if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value:
                        out[item.target.id] = ast.get_source_segment(source_k, item.value) or ""
    return out


def format_signature(name: str, func: Callable[..., Any], *, drop_first: bool = False,
                     prefix: str = "def ", defaults: Optional[dict[str, str]] = None,
                     returns: bool = True) -> Optional[str]:
    """``prefix + name(params) -> return``, from the function's signature, or None if it
    has none that inspect can read. Long ones get one parameter per line."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    sources = dict(defaults or {})
    sources.update(_default_sources(func))
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    parts: list[str] = []
    seen_kwonly = False
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            parts.append("*")
            seen_kwonly = True
        if p.kind is p.VAR_POSITIONAL:
            seen_kwonly = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text = "*" + text
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            sep = " = " if p.annotation is not p.empty else "="
            text += sep + _default(p.default, sources.get(p.name))
        parts.append(text)
        nxt = params[i + 1] if i + 1 < len(params) else None
        if p.kind is p.POSITIONAL_ONLY and (nxt is None or nxt.kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    ret = ""
    if returns and sig.return_annotation is not sig.empty:
        ret = f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{prefix}{name}({', '.join(parts)}){ret}"
    if len(one_line) <= LINE_WIDTH:
        return one_line
    body = "".join(f"    {p},\n" for p in parts)
    return f"{prefix}{name}(\n{body}){ret}"


def class_signature(cls: type) -> str:
    """``class Name(params)`` from its constructor, or ``class Name`` when the constructor
    is inherited from outside capsched."""
    ctor: Optional[type] = None
    method = "__init__"
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        ctor, method = cls, "__new__"  # a NamedTuple
    else:
        ctor = next((k for k in cls.__mro__ if "__init__" in vars(k)), None)
    head = None
    if ctor is not None and ctor.__module__.startswith(PACKAGE):
        init = vars(ctor).get(method)
        defaults = _dataclass_defaults(cls) if dataclasses.is_dataclass(cls) else {}
        if isinstance(init, staticmethod):
            init = init.__func__
        if init is not None:
            head = format_signature(cls.__name__, init, drop_first=True, prefix="class ",
                                    defaults=defaults, returns=False)
    if head is None:
        head = f"class {cls.__name__}"
    return head


def class_bases(cls: type) -> str:
    """The class's bases as markdown code spans, or "" for a plain ``object`` subclass."""
    bases = [b for b in cls.__bases__ if b is not object]
    return ", ".join(
        f"`{b.__qualname__}`" if b.__module__ == "builtins" or b.__module__.startswith(PACKAGE)
        else f"`{b.__module__}.{b.__qualname__}`"
        for b in bases
    )


# --------------------------------------------------------------------------- docstrings


_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_ENTRY = re.compile(r"^([A-Za-z_][\w.*]*(?:, [A-Za-z_][\w.*]*)*)( \([^)]*\))?:(?=\s|$)")
_SECTION = re.compile(r"^(Args|Arguments|Attributes|Parameters|Raises|Returns|Yields|Example|Examples|Note|Notes):\s*$")


def _inline(text: str) -> str:
    text = _ROLE.sub(r"`\1`", text)
    return _LITERAL.sub(r"`\1`", text)


def _entry(text: str) -> str:
    """A section entry ``name: text`` with the name as code."""
    m = _ENTRY.match(text)
    if m:
        text = f"`{m.group(1)}`{m.group(2) or ''}:{text[m.end():]}"
    return _inline(text)


def docstring_markdown(doc: str) -> str:
    """A cleaned docstring as markdown: roles and double backquotes become code spans,
    Google-style sections become bold headings with bullet lists, literal blocks (after
    ``::``, or doctest ``>>>`` lines) become fenced code."""
    lines = doc.splitlines()
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(_inline("\n".join(para)))
            para.clear()

    i = 0
    literal_next = False
    in_section = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            flush()
            out.append("")
            i += 1
            continue
        if indent == 0 and stripped.startswith(">>>"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```python", *block, "```"]
            in_section = False
            continue
        if indent > 0 and (literal_next or not in_section):
            flush()
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
                block.append(lines[i][indent:] if lines[i].strip() else "")
                i += 1
            while block and not block[-1]:
                block.pop()
            lang = "python" if block and block[0].lstrip().startswith(">>>") else "text"
            out += ["", f"```{lang}", *block, "```", ""]
            literal_next = False
            continue
        m = _SECTION.match(stripped) if indent == 0 else None
        if m:
            flush()
            out += ["", f"**{m.group(1)}:**", ""]
            in_section = True
            i += 1
            continue
        if in_section and indent > 0:
            # an entry (first indent level) and its continuation lines (deeper)
            text = [stripped]
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > indent:
                text.append(lines[i].strip())
                i += 1
            out.append("- " + _entry(" ".join(text)))
            continue
        in_section = False
        if stripped.endswith("::"):
            literal_next = True
            stripped = stripped[:-3] + ":" if stripped.endswith(" ::") else stripped[:-1]
        para.append(stripped)
        i += 1
    flush()
    joined = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", joined).strip()


def inherited_doc(cls: type, name: str) -> Optional[tuple[str, str]]:
    """``(base class name, docstring)`` of the method or property ``name`` that ``cls``
    overrides, from the nearest base that documents it (None if none does)."""
    for base in cls.__mro__[1:]:
        if base is object or name not in vars(base):
            continue
        raw = vars(base)[name]
        target = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        doc = own_doc(target)
        if doc:
            qual = base.__qualname__ if base.__module__.startswith(PACKAGE) else f"{base.__module__}.{base.__qualname__}"
            return qual, doc
    return None


def own_doc(obj: Any) -> Optional[str]:
    """The object's own docstring (not inherited, not dataclasses' generated one), cleaned."""
    raw = obj.__doc__ if isinstance(obj, (type, types.ModuleType, property)) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and "__doc__" not in vars(obj):
        raw = None
    if not isinstance(raw, str) or not raw.strip():
        return None
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and raw.startswith(obj.__name__ + "("):
        return None  # dataclasses' generated "Name(field: type, ...)"
    if isinstance(obj, type) and issubclass(obj, tuple) and raw.startswith(obj.__name__ + "("):
        return None  # namedtuple's generated one
    return inspect.cleandoc(raw)


# --------------------------------------------------------------------------- rendering


def _anchor(qualname: str) -> str:
    return qualname.replace(".", "-").lower()


@dataclasses.dataclass
class Entry:
    """One documented object."""

    module: str
    name: str
    obj: Any
    kind: str


def collect() -> tuple[list[types.ModuleType], dict[str, list[Entry]], dict[int, str]]:
    """The modules, each module's entries (objects it defines), and object id -> the
    dotted name it is documented under."""
    modules = public_modules()
    entries: dict[str, list[Entry]] = {m.__name__: [] for m in modules}
    where: dict[int, str] = {}
    # classes and functions in the public module that defines them (even when only a
    # parent package exports them), so that re-exports link there
    for module in modules:
        for name in public_names(module):
            obj = getattr(module, name)
            if kind_of(obj) not in ("class", "function") or id(obj) in where:
                continue
            home = home_module(obj, module.__name__)
            if home in entries and obj.__name__ in public_names(sys.modules[home]) + [name]:
                where[id(obj)] = f"{home}.{obj.__name__}"
                entries[home].append(Entry(home, obj.__name__, obj, kind_of(obj)))
    for module in modules:
        for name in public_names(module):
            obj = getattr(module, name)
            kind = kind_of(obj)
            if kind == "module":
                continue
            if kind in ("class", "function") and id(obj) in where:
                continue
            if kind == "data":
                src, _ = constant_source(module.__name__, name)
                if src is None and any(
                    m is not module and name in public_names(m) and getattr(m, name) is obj
                    and constant_source(m.__name__, name)[0] is not None
                    for m in modules
                ):
                    continue  # imported: documented in the module that assigns it
                entries[module.__name__].append(Entry(module.__name__, name, obj, kind))
                continue
            # a class or function defined elsewhere (outside capsched, or under another name)
            where[id(obj)] = f"{module.__name__}.{name}"
            entries[module.__name__].append(Entry(module.__name__, name, obj, kind))
    for mname, es in entries.items():
        order = {n: i for i, n in enumerate(public_names(sys.modules[mname]))}
        es.sort(key=lambda e: order.get(e.name, len(order)))
    return modules, entries, where


def _summary(doc: Optional[str]) -> str:
    if not doc:
        return ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    if first.endswith("::"):
        first = first[:-1]
    return _inline(first).replace("|", "\\|")


def _render_entry(e: Entry, out: list[str]) -> None:
    qual = f"{e.module}.{e.name}"
    out.append(f'<a id="{_anchor(qual)}"></a>')
    out.append("")
    if e.kind == "data":
        src, comment = constant_source(e.module, e.name)
        value = src if src is not None else _default(e.obj, None)
        out.append(f"### `{e.name}` (constant)")
        out.append("")
        out += ["```python", f"{e.name} = {value}", "```", ""]
        if comment:
            out += [_inline(comment), ""]
        return
    doc = own_doc(e.obj)
    if e.kind == "class":
        out.append(f"### `{e.name}` (class)")
        sig = class_signature(e.obj)
    else:
        out.append(f"### `{e.name}()`")
        sig = format_signature(e.name, e.obj) or f"def {e.name}(...)"
    out += ["", "```python", sig, "```", ""]
    if e.kind == "class" and class_bases(e.obj):
        out += [f"Bases: {class_bases(e.obj)}", ""]
    out += [docstring_markdown(doc) if doc else "*(no docstring)*", ""]
    if e.kind == "class":
        for name, mkind, member in class_members(e.obj):
            out.append(f'<a id="{_anchor(qual + "." + name)}"></a>')
            out.append("")
            label = {"property": " (property)", "classmethod": " (classmethod)",
                     "staticmethod": " (staticmethod)"}.get(mkind, "()")
            out.append(f"#### `{e.name}.{name}`{label}")
            out.append("")
            if mkind == "property":
                fget = member.fget
                ret = ""
                if fget is not None:
                    try:
                        ann = inspect.signature(fget).return_annotation
                        if ann is not inspect.Signature.empty:
                            ret = f": {_annotation(ann)}"
                    except (TypeError, ValueError):
                        pass
                out += ["```python", f"{name}{ret}", "```", ""]
            else:
                msig = format_signature(name, member, drop_first=(mkind != "staticmethod"))
                out += ["```python", msig or f"def {name}(...)", "```", ""]
            mdoc = own_doc(member)
            if not mdoc:
                found = inherited_doc(e.obj, name)
                if found:
                    out += [f"*(documented in `{found[0]}`:)*", ""]
                    mdoc = found[1]
            out += [docstring_markdown(mdoc) if mdoc else "*(no docstring)*", ""]


def render() -> str:
    """The whole of docs/api.md."""
    modules, entries, where = collect()
    pkg = modules[0]
    out = [
        "# API reference",
        "",
        "<!-- Generated by tools/gen_api_docs.py from the docstrings; do not edit by hand.",
        "     Regenerate with: python tools/gen_api_docs.py -->",
        "",
        "Every public name of capsched, with its signature and docstring. The package's",
        "top-level names are listed first, each linked to where it is documented; then each",
        "public module in turn. Concepts are in [concepts.md](concepts.md), a first program",
        "in [quickstart.md](quickstart.md).",
        "",
        "Modules: " + ", ".join(f"[`{m.__name__}`](#{_anchor(m.__name__)})" for m in modules),
        "",
    ]
    for module in modules:
        mname = module.__name__
        out += [f'<a id="{_anchor(mname)}"></a>', "", f"## `{mname}`", ""]
        mdoc = own_doc(module)
        out += [docstring_markdown(mdoc) if mdoc else "*(no docstring)*", ""]
        if module is pkg:
            out += ["| name | what it is |", "|---|---|"]
            for name in public_names(pkg):
                obj = getattr(pkg, name)
                kind = kind_of(obj)
                if kind == "module":
                    target = obj.__name__
                    summary = _summary(own_doc(obj))
                elif kind == "data":
                    target = f"{mname}.{name}"
                    src, comment = constant_source(mname, name)
                    if src is None:
                        for m in modules[1:]:
                            if name in public_names(m) and getattr(m, name) is obj:
                                target = f"{m.__name__}.{name}"
                                src, comment = constant_source(m.__name__, name)
                                break
                    summary = _inline(comment) if comment else f"constant `{_shorten(src or repr(obj))}`".replace("|", "\\|")
                else:
                    target = where.get(id(obj), f"{mname}.{name}")
                    summary = _summary(own_doc(obj))
                alias = "" if target.endswith("." + name) else f" (`{target}`)"
                out.append(f"| [`{name}`](#{_anchor(target)}){alias} | {summary} |")
            out.append("")
            for e in entries[mname]:
                if e.kind == "data" and constant_source(mname, e.name)[0] is None:
                    continue  # re-exported constants are documented in their module
                _render_entry(e, out)
            continue
        for e in entries[mname]:
            _render_entry(e, out)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"
    return text


def missing_docstrings() -> list[str]:
    """Dotted names of public modules, classes, functions, methods and properties that
    have no docstring (a method that overrides a documented one inherits its docstring;
    constants cannot have one and are not listed)."""
    modules, entries, _ = collect()
    missing = [m.__name__ for m in modules if not own_doc(m)]
    for mname, es in entries.items():
        for e in es:
            if e.kind == "data":
                continue
            if not own_doc(e.obj):
                missing.append(f"{mname}.{e.name}")
            if e.kind == "class":
                for name, _, member in class_members(e.obj):
                    if not own_doc(member) and not inherited_doc(e.obj, name):
                        missing.append(f"{mname}.{e.name}.{name}")
    return missing


def iter_constants() -> Iterator[tuple[str, Optional[str]]]:
    """``(dotted name, #: comment or None)`` for every documented constant."""
    _, entries, _ = collect()
    for mname, es in entries.items():
        for e in es:
            if e.kind == "data":
                _, comment = constant_source(mname, e.name)
                yield f"{mname}.{e.name}", comment or None


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: write docs/api.md, or check it (``--check``) or list gaps (``--missing``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write (default docs/api.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    parser.add_argument("--missing", action="store_true", help="list public names without a docstring; exit 1 if any")
    args = parser.parse_args(argv)
    if args.missing:
        missing = missing_docstrings()
        for name in missing:
            print(name)
        return 1 if missing else 0
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python tools/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
