"""The only modules that touch third-party private names: one small module per dependency.

Each function wraps one private name, says in its docstring why no public API does the job, and
falls back to the public API where one exists. docs/internals.md lists every name, and
tests/adapters/ holds one test per module that fails, naming the dependency and the name, when an
upgrade renames or removes it. Callers import the adapter, never the private name.

Adapters import their dependency inside the functions that need it, so importing one costs nothing
on a side of the job that lacks that dependency.
"""
