"""Supported languages: file extensions, tree-sitter grammars and the node types that make code units.

Grammars come from the per-language wheels (tree-sitter-python, -javascript, ...), which ship compiled
parsers; tree-sitter-language-pack is avoided because it downloads grammars at run time and fails offline.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tree_sitter

#: extension (lower case, with dot) -> language name.
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go",
    ".java": "java",
    ".rs": "rust",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hh": "cpp", ".hpp": "cpp", ".hxx": "cpp",
}

_C_COMMENTS = frozenset({"comment"})
_JAVA_COMMENTS = frozenset({"line_comment", "block_comment"})
_JS_DEFS = {
    "function_declaration": "function", "generator_function_declaration": "function",
    "method_definition": "function", "class_declaration": "class",
}
_TS_DEFS = {**_JS_DEFS, "abstract_class_declaration": "class", "interface_declaration": "class"}


@dataclass(frozen=True)
class LanguageSpec:
    """How to parse one language and which syntax nodes are code units."""

    name: str
    module: str  # grammar wheel's import name
    function: str  # the module's function returning the language pointer
    defs: dict[str, str]  # node type -> "function" | "class"
    comments: frozenset[str]  # node types of comments (doc comments precede a unit)
    # Node types that wrap a definition (decorators, export, templates): comments precede the wrapper.
    wrappers: frozenset[str] = frozenset()
    # Node types that may sit between a doc comment and its definition (Rust attributes, Java annotations).
    between: frozenset[str] = frozenset()
    line_comment: str = "//"


SPECS: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        "python", "tree_sitter_python", "language",
        {"function_definition": "function", "class_definition": "class"},
        frozenset({"comment"}), frozenset({"decorated_definition"}), line_comment="#"),
    "javascript": LanguageSpec(
        "javascript", "tree_sitter_javascript", "language", _JS_DEFS, _C_COMMENTS,
        frozenset({"export_statement"})),
    "typescript": LanguageSpec(
        "typescript", "tree_sitter_typescript", "language_typescript", _TS_DEFS, _C_COMMENTS,
        frozenset({"export_statement"})),
    "tsx": LanguageSpec(
        "tsx", "tree_sitter_typescript", "language_tsx", _TS_DEFS, _C_COMMENTS,
        frozenset({"export_statement"})),
    "go": LanguageSpec(
        "go", "tree_sitter_go", "language",
        {"function_declaration": "function", "method_declaration": "function", "type_declaration": "class"},
        _C_COMMENTS),
    "java": LanguageSpec(
        "java", "tree_sitter_java", "language",
        {"method_declaration": "function", "constructor_declaration": "function",
         "class_declaration": "class", "interface_declaration": "class", "enum_declaration": "class",
         "record_declaration": "class"},
        _JAVA_COMMENTS),
    "rust": LanguageSpec(
        "rust", "tree_sitter_rust", "language",
        {"function_item": "function", "impl_item": "class", "struct_item": "class", "enum_item": "class",
         "trait_item": "class"},
        _JAVA_COMMENTS, between=frozenset({"attribute_item"})),
    "c": LanguageSpec(
        "c", "tree_sitter_c", "language", {"function_definition": "function"}, _C_COMMENTS),
    "cpp": LanguageSpec(
        "cpp", "tree_sitter_cpp", "language",
        {"function_definition": "function", "class_specifier": "class", "struct_specifier": "class"},
        _C_COMMENTS, frozenset({"template_declaration"})),
}

#: Languages as users name them (tsx is TypeScript with JSX).
DISPLAY_NAME = {"tsx": "typescript"}


def language_for(path: str) -> str | None:
    """Language of a file from its extension, or None when unsupported."""
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None


@lru_cache(maxsize=None)
def ts_language(name: str) -> "tree_sitter.Language":
    """The compiled tree-sitter grammar for a language (cached per process)."""
    import tree_sitter

    spec = SPECS[name]
    module = importlib.import_module(spec.module)
    return tree_sitter.Language(getattr(module, spec.function)())


@lru_cache(maxsize=None)
def parser_for(name: str) -> "tree_sitter.Parser":
    import tree_sitter

    return tree_sitter.Parser(ts_language(name))


@lru_cache(maxsize=None)
def unit_query(name: str) -> "tree_sitter.QueryCursor":
    """A query cursor capturing every definition node of the language as @def."""
    import tree_sitter

    patterns = " ".join(f"({node_type})" for node_type in SPECS[name].defs)
    query = tree_sitter.Query(ts_language(name), f"[{patterns}] @def")
    return tree_sitter.QueryCursor(query)
