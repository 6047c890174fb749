"""
Sphinx configuration of the smtphooks documentation.

Build it from the repository root (after C{pip install '.[docs]'}):

    sphinx-build -W -b html docs docs/_build/html

The guides are Markdown (MyST); the API reference is generated from the
docstrings, which are written in epytext as Twisted's are.  L{epytext_to_rest}
turns each docstring into reStructuredText before autodoc renders it: fields
(C{@param}, C{@return}, C{@raise}, C{@ivar}, ...) become reST field lists and
inline markup (C{L{...}}, C{C{...}}, C{I{...}}, ...) becomes roles.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

# Document the checkout this file is in, not whatever smtphooks is installed.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)

from smtphooks import __version__  # noqa: E402

project = "smtphooks"
author = "the smtphooks authors"
copyright = "the smtphooks authors (MIT license)"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store", "**/.mypy_cache"]

# MyST: ```{directive}``` fences, and "#" headings up to ### get link targets, so
# guides can link to each other's sections ([](hooks.md#on_data)).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: one page per public name group, in source order, class and __init__
# docstrings together, type hints in the signatures.
autodoc_default_options = {"member-order": "bysource"}
autoclass_content = "both"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"smtphooks {release}"
html_theme_options = {
    "description": "A mail-receiving SMTP/LMTP server library on Twisted",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []


# -- epytext -> reStructuredText --------------------------------------------------------

#: Epytext fields and the reST field each becomes.
_FIELDS = {
    "param": "param",
    "parameter": "param",
    "arg": "param",
    "argument": "param",
    "keyword": "keyword",
    "kwarg": "keyword",
    "type": "type",
    "return": "returns",
    "returns": "returns",
    "rtype": "rtype",
    "returntype": "rtype",
    "raise": "raises",
    "raises": "raises",
    "except": "raises",
    "exception": "raises",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
    "note": "note",
    "see": "see",
    "since": "since",
    "deprecated": "deprecated",
    "todo": "todo",
    "author": "author",
}
_FIELD = re.compile(r"^(\s*)@(\w+)(?:[ \t]+([^:]*?))?[ \t]*:(?:[ \t]+|$)(.*)$")
_MARKUP = re.compile(r"(?<![A-Za-z0-9_])([LCIBUEMXS])\{")
_ESCAPES = {"lb": "{", "rb": "}", "at": "@", "lt": "<", "gt": ">"}
#: What may come right before and right after reST inline markup.
_OPENERS = "-:/'\"<([{"
_CLOSERS = "-.,:;!?/'\")]}>"
_TARGET = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)


def _escape(text: str) -> str:
    """
    Make plain epytext text plain reST text: characters that would start reST
    markup are escaped.
    """
    text = text.replace("\\", "\\\\")
    text = re.sub(r"([*`|])", r"\\\1", text)
    # "name_" and "name__" are references in reST.
    return re.sub(r"(?<=\w)(_+)(?=\W|$)", lambda m: "\\" + m.group(1), text)


def _flat(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _render(tag: str, content: str) -> str:
    """
    One piece of epytext inline markup as reST.
    """
    if tag == "C":
        literal = _flat(content)
        return f"``{literal}``" if literal else ""
    if tag == "L":
        match = _TARGET.match(_flat(content))
        if match and match.group(1):
            return f":py:obj:`{match.group(1)} <{match.group(2)}>`"
        return f":py:obj:`{_flat(content)}`"
    if tag == "U":
        match = _TARGET.match(_flat(content))
        if match and match.group(1):
            return f"`{match.group(1)} <{match.group(2)}>`__"
        return f"`<{_flat(content)}>`__"
    if tag == "E":
        return _ESCAPES.get(content.strip(), content)
    if tag == "M":
        return f"``{_flat(content)}``"
    inner = _inline(content)
    if tag in ("I", "B") and inner == _escape(content) and content.strip() == content:
        # reST does not nest inline markup: emphasis only around plain text.
        mark = "*" if tag == "I" else "**"
        return f"{mark}{_flat(inner)}{mark}"
    return inner  # X{} (index terms), S{} (symbols), and emphasis around markup


def _inline(text: str) -> str:
    """
    Convert the inline markup of a run of lines; braces may nest and span lines.
    """
    out: list[str] = []
    i = 0
    while True:
        match = _MARKUP.search(text, i)
        if match is None:
            out.append(_escape(text[i:]))
            break
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:  # unbalanced: not markup after all
            out.append(_escape(text[i : match.end()]))
            i = match.end()
            continue
        out.append(_escape(text[i : match.start()]))
        rendered = _render(match.group(1), text[match.end() : j - 1])
        # reST inline markup must stand apart from the text around it.
        before = out[-1][-1:] if out and out[-1] else ""
        if rendered and before and not (before.isspace() or before in _OPENERS):
            rendered = "\\ " + rendered
        if rendered and j < len(text) and not (text[j].isspace() or text[j] in _CLOSERS):
            rendered += "\\ "
        out.append(rendered)
        i = j
    return "".join(out)


def _fields(lines: list[str]) -> list[str]:
    """
    Turn C{@field arg: text} lines into reST fields, with the blank line a
    field list needs before it.
    """
    out: list[str] = []
    for line in lines:
        match = _FIELD.match(line)
        if match is None or match.group(2).lower() not in _FIELDS:
            out.append(line)
            continue
        indent, name, arg, rest = match.groups()
        field = _FIELDS[name.lower()]
        if out and out[-1].strip() and not out[-1].lstrip().startswith(":"):
            out.append("")
        head = f"{indent}:{field} {arg.strip()}:" if arg else f"{indent}:{field}:"
        out.append(f"{head} {rest}".rstrip())
    return out


def epytext_to_rest(lines: list[str]) -> list[str]:
    """
    Convert a docstring, as a list of lines, from epytext to reST.  Literal
    blocks (after C{::}) and doctest blocks are left as they are.
    """
    out: list[str] = []
    prose: list[str] = []
    literal_indent: int | None = None
    in_doctest = False

    def flush() -> None:
        if prose:
            out.extend(_inline("\n".join(_fields(prose))).split("\n"))
            prose.clear()

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                out.append(line)
                continue
            literal_indent = None
        if in_doctest:
            if stripped:
                out.append(line)
                continue
            in_doctest = False
        if stripped.startswith(">>>"):
            flush()
            out.append(line)
            in_doctest = True
            continue
        prose.append(line)
        if stripped.endswith("::"):
            flush()
            literal_indent = indent
    flush()
    return out


def _interface_attributes(obj: Any) -> list[str]:
    """
    The attributes of a zope.interface interface, as a bullet list.
    """
    from zope.interface.interface import Method

    out = ["", "Attributes:", ""]
    for name in obj.names():
        description = obj[name]
        doc = " ".join(description.getDoc().split()) if not isinstance(description, Method) else ""
        out.append(f"- ``{name}`` -- {_inline(doc)}" if doc else f"- ``{name}``")
    return [*out, ""]


_NAMEDTUPLE_NEW = re.compile(r"^Create new instance of \w+\(.*\)$")


def _process_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if len(lines) >= 1 and _NAMEDTUPLE_NEW.match(lines[0]):
        lines[:] = []  # the __new__ of a NamedTuple says nothing
        return
    lines[:] = epytext_to_rest(lines)
    from zope.interface.interface import InterfaceClass

    if isinstance(obj, InterfaceClass) and lines:
        lines.extend(_interface_attributes(obj))


def _skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    doc = getattr(obj, "__doc__", None) or ""
    if doc.startswith("Alias for field number "):
        return True  # a NamedTuple's fields are described by the class docstring
    return None


#: C{<InterfaceClass a.b.IName>}, as a zope interface shows in a type hint.
_INTERFACE_REPR = re.compile(r"<InterfaceClass (?:[\w]+\.)*(\w+)>")


def _process_signature(
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    def clean(text: str | None) -> str | None:
        return _INTERFACE_REPR.sub(r"\1", text) if text else text

    return clean(signature), clean(return_annotation)


def _missing_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """
    Resolve C{L{Session}} written inside C{smtphooks.testing} (or any short
    name of ours) to the documented C{smtphooks.Session}, as epydoc and
    pydoctor do.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    domain = env.get_domain("py")
    last = target.rsplit(".", 1)[-1]
    for candidate in (
        f"smtphooks.{target}",
        f"smtphooks.testing.{target}",
        f"smtphooks.{last}",
        f"smtphooks.testing.{last}",
    ):
        if candidate in domain.objects:
            break
    else:
        # Documented under a private module (smtphooks._session.RecipientDSN).
        found = [
            name for name in domain.objects
            if name.startswith("smtphooks.") and name.endswith(f".{last}")
        ]  # fmt: skip
        if len(found) != 1:
            return None
        candidate = found[0]
    return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", candidate, node, contnode)


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _missing_reference)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-process-signature", _process_signature)
    app.connect("autodoc-skip-member", _skip_member)
    return {"parallel_read_safe": True}
