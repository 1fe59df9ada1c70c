"""tree-sitter units in every supported language: names, kinds, docstrings, header/body split."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.dataset.mine import mine_file
from ade_mlflow_plugin.dataset.walk import SourceFile, walk_codebase
from ade_mlflow_plugin.dataset.languages import language_for

EXPECTED = {
    "src/app/inventory.py": {("class", "Inventory", "A store of item counts keyed by SKU."),
                             ("method", "add", "Add `amount` of an item and return the new count."),
                             ("function", "restock_plan", None)},
    "web/cart.js": {("function", "cartTotal", "Total price of the cart lines, with an optional discount in percent."),
                    ("class", "Cart", None), ("method", "addLine", "Add a line for a product, merging with an existing line.")},
    "web/service.ts": {("function", "fetchOrder", "Fetch one order by id and parse its JSON body."),
                       ("class", "OrderBook", None), ("method", "record", "Record an order and return how many are held.")},
    "go/server.go": {("class", "Greeter", "Greeter builds greetings for a fixed audience."),
                     ("function", "Greet", None), ("function", "CountWords", "CountWords counts the words of a sentence.")},
    "java/Greeter.java": {("class", "Greeter", "Greets people politely."), ("method", "greet", "Greet one person by name.")},
    "rust/lib.rs": {("class", "Point", "A point in the plane."), ("class", "Point", None),
                    ("method", "distance", "Euclidean distance to another point."), ("function", "perimeter", None)},
    "c/list.c": {("function", "list_push", "Push a value on the front of the list; returns the new head."),
                 ("function", "list_sum", "Sum every value of the list.")},
    "cpp/shape.cpp": {("class", "Circle", "A circle with a radius."), ("method", "area", "Area of the circle."),
                      ("function", "total_area", None)},
}


def _units(codebase, rel):
    return mine_file(SourceFile(rel, str(codebase / rel), language_for(rel), 1)).units


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_units_of_each_language(codebase, rel):
    units = _units(codebase, rel)
    found = {(u.kind, u.name, u.docstring) for u in units}
    for kind, name, doc in EXPECTED[rel]:
        assert any(k == kind and n == name and (doc is None or d == doc) for k, n, d in found), (kind, name, found)
    assert all(u.language in {"python", "javascript", "typescript", "go", "java", "rust", "c", "cpp"} for u in units)


def test_python_header_body_and_docstring_split(codebase):
    add = next(u for u in _units(codebase, "src/app/inventory.py") if u.name == "add")
    assert add.start_line == 12 and add.end_line == 17
    assert add.signature == "def add(self, sku: str, amount: int = 1) -> int:"
    assert add.header == 'def add(self, sku: str, amount: int = 1) -> int:\n    """Add `amount` of an item and return the new count."""\n'
    assert add.body.startswith("    if amount < 0:\n") and add.body.endswith("return self.counts[sku]\n")
    assert '"""' not in add.code_nodoc and add.code_nodoc.startswith("def add(")
    assert add.code == add.header + add.body


def test_brace_language_header_includes_doc_comment(codebase):
    push = next(u for u in _units(codebase, "c/list.c") if u.name == "list_push")
    assert push.header == ("/* Push a value on the front of the list; returns the new head. */\n"
                           "struct node *list_push(struct node *head, int value) {\n")
    assert push.body.rstrip().endswith("}") and "malloc" in push.body
    assert push.doc_start_line == 9 and push.start_line == 10


def test_languages_from_extensions():
    assert language_for("a/b.py") == "python" and language_for("x.tsx") == "tsx"
    assert language_for("x.H") == "c" and language_for("x.hpp") == "cpp" and language_for("README") is None


def test_walk_honours_gitignore_and_skips(codebase):
    walked = walk_codebase(codebase)
    rels = {f.rel for f in walked.files}
    assert "ignored_module.py" not in rels and "src/app/nested/local_only.py" not in rels
    assert not any(r.startswith(("build/", "vendor/", "node_modules/")) for r in rels)
    assert "src/app/nested/kept.py" in rels and "web/app.min.js" not in rels and "src/app/api_pb2.py" not in rels
    assert walked.skipped["ignored"] == 3 and walked.skipped["vendored"] == 2


def test_walk_extra_excludes_and_size_limit(codebase):
    walked = walk_codebase(codebase, exclude=["web/", "*.rs"], max_file_bytes=600)
    rels = {f.rel for f in walked.files}
    assert not any(r.startswith("web/") or r.endswith(".rs") for r in rels)
    assert walked.skipped["too_large"] > 0
    assert all(f.size <= 600 for f in walked.files)
