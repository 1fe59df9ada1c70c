"""Code units (functions, methods, classes) from a tree-sitter parse.

Text is cut by whole source lines so indentation survives, then dedented by the unit's first line.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from ade_mlflow_plugin.dataset.languages import DISPLAY_NAME, SPECS, LanguageSpec, parser_for, unit_query

_NAME_RE = re.compile(r"([A-Za-z_~][A-Za-z0-9_]*)\s*(?:<[^()]*>)?\s*\(")
_TYPE_NAME_RE = re.compile(r"\b(?:type|struct|class|impl(?:\s*<[^>]*>)?|trait|enum|interface)\s+([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT_MARKERS = re.compile(r"^\s*(?:/\*+|\*+/|\*(?!/)|//+!?|#+)\s?")


@dataclass(slots=True)
class CodeUnit:
    """One function, method or class. Its texts are cut from the file's lines on demand: only the units
    that end up in examples pay for dedenting."""

    path: str
    language: str
    kind: str  # function | method | class
    name: str
    start_line: int  # 1-based, inclusive (doc comment excluded)
    end_line: int
    signature: str
    docstring: str  # cleaned text, "" when none
    doc_start_line: int  # first line of the preceding doc comment (== start_line when none)
    lines: list[str]  # the whole file's lines, shared by its units
    indent: str  # leading whitespace of the first line, removed from every line
    chars: int  # length of the definition in the source
    doc_rows: tuple[int, int] | None = None  # 0-based rows of a Python docstring inside the definition
    split_row: int = -1  # 0-based row where the body starts (header = rows before it); -1 when unsplittable

    @property
    def raw(self) -> str:
        """The definition as in the file (not dedented): for hashing and sketching."""
        return "\n".join(self.lines[self.start_line - 1:self.end_line])

    @property
    def code(self) -> str:
        """The definition, dedented (a Python docstring included)."""
        return _dedent(self.lines[self.start_line - 1:self.end_line], self.indent)

    @property
    def code_nodoc(self) -> str:
        """The definition without its docstring."""
        if self.doc_rows is None:
            return self.code
        d0, d1 = self.doc_rows
        return _dedent(self.lines[self.start_line - 1:d0] + self.lines[d1 + 1:self.end_line], self.indent)

    @property
    def header(self) -> str:
        """Doc comment + signature (+ Python docstring): the prompt for the body; "" when unsplittable."""
        if self.split_row < 0:
            return ""
        return _dedent(self.lines[self.doc_start_line - 1:self.split_row], self.indent)

    @property
    def body(self) -> str:
        """What follows the header."""
        if self.split_row < 0:
            return ""
        return _dedent(self.lines[self.split_row:self.end_line], self.indent)

    @property
    def line_count(self) -> int:
        return self.end_line - self.start_line + 1


def _dedent(lines: list[str], indent: str) -> str:
    width = len(indent)
    out = [ln[width:] if ln.startswith(indent) else ln.lstrip() for ln in lines]
    return "\n".join(out).rstrip() + "\n"


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _node_text(src: bytes, node) -> str:
    return src[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _name_of(node, src: bytes, signature: str, is_class: bool) -> str:
    name = node.child_by_field_name("name")
    if name is not None:
        return _node_text(src, name)
    pattern = _TYPE_NAME_RE if is_class else _NAME_RE
    match = pattern.search(signature)
    return match.group(1) if match else ""


def _python_docstring(body, src: bytes) -> tuple[str, int, int] | None:
    """(cleaned docstring, start row, end row) when the block starts with a string literal."""
    if body is None or body.named_child_count == 0:
        return None
    first = body.named_child(0)  # named_children would build a node object for every statement
    if first.type != "expression_statement" or first.named_child_count != 1:
        return None
    string = first.named_child(0)
    if string.type != "string":
        return None
    content = "".join(_node_text(src, c) for c in string.children if c.type == "string_content")
    return inspect.cleandoc(content), first.start_point[0], first.end_point[0]


def _clean_comment(text: str) -> str:
    lines = [_COMMENT_MARKERS.sub("", ln, count=1).rstrip() for ln in text.splitlines()]
    lines = [ln[:-2].rstrip() if ln.endswith("*/") else ln for ln in lines]
    return inspect.cleandoc("\n".join(lines)).strip()


def _doc_comment(outer, spec: LanguageSpec, src: bytes) -> tuple[str, int] | None:
    """Comments right above a definition (doc comments): (cleaned text, first row)."""
    parts: list[str] = []
    node, row = outer.prev_named_sibling, outer.start_point[0]
    first_row = row
    while node is not None and _last_row(node) >= row - 1:
        if node.type in spec.comments:
            parts.append(_node_text(src, node))
            first_row = node.start_point[0]
        elif node.type not in spec.between:
            break
        row = node.start_point[0]
        node = node.prev_named_sibling
    if not parts:
        return None
    text = _clean_comment("\n".join(reversed(parts)))
    return (text, first_row) if text else None


def _last_row(node) -> int:
    """Last row holding text of a node (line comments may end at column 0 of the next row)."""
    end_row, end_col = node.end_point
    return end_row - 1 if end_col == 0 and end_row > node.start_point[0] else end_row


def _kinds(nodes: list, spec: LanguageSpec) -> list[str]:
    """function | method | class for nodes sorted by start: a function inside a class range is a method.
    (Walking each node's parents through the Python bindings costs more than the parse.)"""
    kinds, open_classes = [], []  # end bytes of the classes enclosing the current node
    for node in nodes:
        while open_classes and open_classes[-1] <= node.start_byte:
            open_classes.pop()
        kind = spec.defs[node.type]
        kinds.append("method" if kind == "function" and open_classes else kind)
        if kind == "class":
            open_classes.append(node.end_byte)
    return kinds


def _outer(node, spec: LanguageSpec):
    while node.parent is not None and node.parent.type in spec.wrappers:
        node = node.parent
    return node


def extract_units(path: str, language: str, src: bytes, lines: list[str], tree=None) -> list[CodeUnit]:
    """All code units of one file, in source order."""
    spec = SPECS[language]
    if tree is None:
        tree = parser_for(language).parse(src)
    nodes = unit_query(language).captures(tree.root_node).get("def", [])
    nodes = sorted(nodes, key=lambda n: n.start_byte)
    units = []
    for node, kind in zip(nodes, _kinds(nodes, spec)):
        unit = _unit(node, kind, spec, path, src, lines)
        if unit is not None:
            units.append(unit)
    return units


def _unit(node, kind: str, spec: LanguageSpec, path: str, src: bytes, lines: list[str]) -> CodeUnit | None:
    body = node.child_by_field_name("body")
    if spec.name == "cpp" and node.type in ("class_specifier", "struct_specifier") and body is None:
        return None  # a forward declaration or an elaborated type, not a definition
    sr, er = node.start_point[0], node.end_point[0]
    signature = src[node.start_byte:body.start_byte if body else node.end_byte].decode("utf-8", "replace")
    signature = signature.strip() if body is not None else signature.split("\n", 1)[0].strip()
    docstring, doc_row, doc_rows, split = "", sr, None, -1
    if spec.name == "python":
        doc = _python_docstring(body, src)
        if doc is not None:
            docstring, d0, d1 = doc
            doc_rows, split = (d0, d1), d1 + 1
        elif body is not None and body.start_point[0] > sr:
            split = body.start_point[0]
    else:
        doc = _doc_comment(_outer(node, spec), spec, src)
        if doc is not None:
            docstring, doc_row = doc
        if body is not None:
            brow = body.start_point[0]
            if brow < er and lines[brow].rstrip().endswith("{"):
                split = brow + 1
    if split > er or (split >= 0 and not any(ln.strip() for ln in lines[split:er + 1])):
        split = -1
    return CodeUnit(
        path=path, language=DISPLAY_NAME.get(spec.name, spec.name), kind=kind,
        name=_name_of(node, src, signature, spec.defs[node.type] == "class"), start_line=sr + 1, end_line=er + 1, signature=signature,
        docstring=docstring, doc_start_line=doc_row + 1, lines=lines, indent=_indent_of(lines[sr]),
        chars=node.end_byte - node.start_byte, doc_rows=doc_rows, split_row=split,
    )
