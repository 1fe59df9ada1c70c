"""The options kit: every configuration field declared once, with its parser, default, help and aliases.

A config is a plain dataclass whose fields are made with :func:`option` (or an :class:`Option` shared
by two configs, such as ``num_examples``). From that one declaration come:

- parsing and validation of each value (:func:`from_mapping` for dicts, JSON and MLflow's string params;
  the ``@options_class`` decorator parses the values given to the constructor too),
- aliases (the seed's ``max_runtime`` for ``max_runtime_s``) in mappings and in constructor calls,
- a did-you-mean for an unknown key,
- the command-line options of the entries and verbs, with their ``--help`` text (:func:`add_arguments`,
  :func:`click_option`).

Every bad value is one ConfigError line naming the key, the value and what to pass instead, formatted
by the config's :class:`Style`. Parsers are plain functions ``value -> parsed`` that raise
:class:`Invalid`; they are idempotent (a parsed value parses to itself).

This module imports neither mlflow nor errors.py up front: ``ade-mlflow <verb> --help`` builds its
options from these fields and must stay fast (errors.py imports mlflow).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ade_mlflow_plugin.errors import ConfigError

T = TypeVar("T")
Parser = Callable[[Any], Any]
_META = "ade_option"
_UNSET: Any = object()


class Invalid(ValueError):
    """Raised by a parser: ``expected`` says what to pass; ``got`` overrides the value shown (a part
    of it, such as one bad dict key); ``detail`` replaces the whole "got ..., expected ..." part."""

    def __init__(self, expected: str, *, got: Any = _UNSET, detail: str | None = None) -> None:
        super().__init__(detail or expected)
        self.expected, self.got, self.detail = expected, got, detail


def _config_error(message: str) -> "ConfigError":
    from ade_mlflow_plugin.errors import ConfigError  # imported here: errors.py imports mlflow

    return ConfigError(message)


def show_repr(value: Any) -> str:
    return repr(value)


def show_json(value: Any) -> str:
    return json.dumps(value, default=str)


@dataclasses.dataclass(frozen=True)
class Style:
    """How a config's messages name things. Templates get ``label``, ``key``, ``value`` (shown),
    ``expected``, ``default``; unknown-key templates get ``key``, ``fix``, ``hint`` and ``known``."""

    label: str
    bad: str = "{label} '{key}': got {value}, expected {expected}"
    detail: str = "{label} '{key}': {detail}"
    unknown: str = "{label}: unknown key '{key}' ({fix})"
    show: Callable[[Any], str] = show_repr

    def bad_value(self, key: str, value: Any, error: Invalid, default: Any = None) -> "ConfigError":
        shown = self.show(value if error.got is _UNSET else error.got)
        if error.detail:
            return _config_error(self.detail.format(label=self.label, key=key, detail=error.detail))
        return _config_error(self.bad.format(label=self.label, key=key, value=shown, expected=error.expected,
                                             default=default))

    def unknown_key(self, key: str, known: Iterable[str]) -> "ConfigError":
        names = sorted(known)
        hint = suggest(key, names)
        fix = f"did you mean '{hint}'?" if hint else f"known keys: {', '.join(names)}"
        return _config_error(self.unknown.format(label=self.label, key=key, fix=fix, known=", ".join(names),
                                                 hint=f" (did you mean '{hint}'?)" if hint else ""))


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt one, or None."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return close[0] if close else None


# ---- declaring fields --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One field's declaration: default (or default_factory), parser, help text, aliases, metavar."""

    default: Any
    parser: Parser
    help: str
    aliases: tuple[str, ...] = ()
    default_factory: Callable[[], Any] | None = None
    metavar: str | None = None

    def field(self) -> Any:
        """A dataclasses.field carrying this declaration; an Option may serve several configs."""
        if self.default_factory is not None:
            return dataclasses.field(default_factory=self.default_factory, metadata={_META: self})
        return dataclasses.field(default=self.default, metadata={_META: self})


def option(default: Any, parser: Parser, help: str, *, aliases: tuple[str, ...] = (),  # noqa: A002
           default_factory: Callable[[], Any] | None = None, metavar: str | None = None) -> Any:
    """Declare a config field: ``lora_r: int = option(16, whole(1, 1024), "LoRA rank ...")``.

    Mutable defaults (dicts, lists) need ``default_factory``; ``default`` is then only for help text.
    """
    return Option(default, parser, help, tuple(aliases), default_factory, metavar).field()


def options_of(cls: type) -> dict[str, Option]:
    """Field name -> Option of a config class, in declaration order."""
    return {f.name: f.metadata[_META] for f in dataclasses.fields(cls) if _META in f.metadata}


def aliases_of(cls: type) -> dict[str, str]:
    """Alias -> field name."""
    return {alias: name for name, opt in options_of(cls).items() for alias in opt.aliases}


def style_of(cls: type) -> Style:
    return getattr(cls, "OPTIONS_STYLE", None) or Style(cls.__name__)


def options_class(cls: type[T]) -> type[T]:
    """Finish a config dataclass: every field must be an option; the constructor takes the aliases and
    parses every value (so ``CloudTrainingConfig(max_runtime=86400)`` works and a bad value in Python
    code fails at once, with the same one-line message as in a backend config)."""
    missing = [f.name for f in dataclasses.fields(cls) if _META not in f.metadata]
    if missing:
        raise TypeError(f"{cls.__name__}: fields {missing} are not declared with options.option()")
    init, aliases = cls.__init__, aliases_of(cls)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **canonical(cls, kwargs, aliases))
        parse_fields(self)

    cls.__init__ = __init__  # type: ignore[assignment]
    return cls


# ---- parsing -----------------------------------------------------------------------------------------


def canonical(cls: type, values: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """``values`` with every alias renamed to its field; both an alias and its field is an error."""
    aliases = aliases_of(cls) if aliases is None else aliases
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in out or (name != key and name in values):
            raise _config_error(f"{style_of(cls).label} '{key}' and '{name}' are the same setting: keep one")
        out[name] = value
    return out


def parse_value(cls: type, name: str, value: Any, *, key: str | None = None) -> Any:
    """Parse one value with the parser of field ``name``; errors name ``key`` (default: the field)."""
    opt = options_of(cls)[name]
    try:
        return opt.parser(value)
    except Invalid as error:
        raise style_of(cls).bad_value(key or name, value, error, opt.default) from None


def parse_as(parser: Parser, key: str, value: Any, style: Style) -> Any:
    """Parse a value that belongs to no config field (an MLproject param of another project)."""
    try:
        return parser(value)
    except Invalid as error:
        raise style.bad_value(key, value, error) from None


def parse_fields(config: Any) -> None:
    """Parse every field of a config instance in place (frozen dataclasses included)."""
    cls = type(config)
    for name in options_of(cls):
        object.__setattr__(config, name, parse_value(cls, name, getattr(config, name)))


def from_mapping(cls: type[T], values: dict[str, Any] | None, *, ignore: Iterable[str] = ()) -> T:
    """Build a config from a mapping: aliases renamed, unknown keys refused with a did-you-mean, every
    value parsed (by the constructor), then the class's ``check_combinations()`` when it has one.

    ``ignore``: keys that may be present and mean nothing here (MLflow's own backend-config keys).
    """
    skip = set(ignore)
    known, aliases = options_of(cls), aliases_of(cls)
    data = {k: v for k, v in (values or {}).items() if k not in skip}
    for key in data:
        if key not in known and key not in aliases:
            raise style_of(cls).unknown_key(key, known)
    config = cls(**canonical(cls, data, aliases))
    check = getattr(config, "check_combinations", None)
    if callable(check):
        check()
    return config


# ---- the shared parsers ------------------------------------------------------------------------------


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid("a number")
    try:
        number = float(value)
    except ValueError:
        raise Invalid("a number") from None
    if not math.isfinite(number):
        raise Invalid("a finite number")
    return number


def number(value: Any) -> float:
    """Any finite number."""
    return _number(value)


def whole(lo: int, hi: int | None = None) -> Parser:
    """An integer in [lo, hi]; "16" and "16.0" parse too (MLflow passes float params as "16.0")."""
    expected = f"an integer >= {lo}" if hi is None else f"an integer between {lo} and {hi}"

    def parse(value: Any) -> int:
        try:
            number = _number(value)
        except Invalid:
            raise Invalid(expected) from None
        if number != int(number) or number < lo or (hi is not None and number > hi):
            raise Invalid(expected)
        return int(number)

    return parse


def real(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> Parser:
    """A finite real number in the interval; (0, inf) reads as "a positive number"."""
    if hi is None:
        expected = "a positive number" if (lo == 0 and lo_open) else f"a number {'>' if lo_open else '>='} {lo}"
    else:
        expected = f"a number in {'(' if lo_open else '['}{float(lo)}, {float(hi)}{')' if hi_open else ']'}"

    def parse(value: Any) -> float:
        number = _number(value)
        too_low = number <= lo if lo_open else number < lo
        too_high = hi is not None and (number >= hi if hi_open else number > hi)
        if too_low or too_high:
            raise Invalid(expected)
        return number

    return parse


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def boolean(*, strict: bool = False) -> Parser:
    """true/false (any case); unless ``strict``, also 1/0/yes/no as command lines write them.

    Backend configs are JSON and take ``strict``: "yes" there is more likely a mistake than a choice.
    """
    words_true, words_false = ({"true"}, {"false"}) if strict else (_TRUE, _FALSE)

    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else None
        if text in words_true or text in words_false:
            return text in words_true
        raise Invalid("true or false")

    return parse


def choice(*options: str) -> Parser:
    """One of ``options`` (case-insensitive; the option's own spelling is kept)."""
    by_lower = {o.lower(): o for o in options}
    expected = " or ".join(repr(o) for o in options)

    def parse(value: Any) -> str:
        found = by_lower.get(value.strip().lower()) if isinstance(value, str) else None
        if found is None:
            raise Invalid(expected)
        return found

    return parse


def text(*, required: bool = False) -> Parser:
    """A string, stripped; ``required``: not empty."""

    def parse(value: Any) -> str:
        if not isinstance(value, str) or (required and not value.strip()):
            raise Invalid("a non-empty string" if required else "a string")
        return value.strip()

    return parse


def pattern(regex: str, expected: str) -> Parser:
    """A string matching ``regex`` in full. ASCII: \\d and \\w would match any Unicode digit or letter, which AWS
    refuses (an account id in Arabic-Indic digits passes Python's \\d)."""
    compiled = re.compile(regex, re.ASCII)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise Invalid(expected)
        return value

    return parse


def optional(parser: Parser) -> Parser:
    """None stays None (unset); anything else goes to ``parser``."""

    def parse(value: Any) -> Any:
        return None if value is None else parser(value)

    return parse


# ---- command lines -----------------------------------------------------------------------------------


def help_text(cls: type, name: str) -> str:
    """The field's help with its default, as --help shows it."""
    opt = options_of(cls)[name]
    default = opt.default  # the declared one: a default_factory may read the environment
    shown = "none" if default in (None, "", {}, []) else default
    return f"{opt.help} (default: {shown})"


def add_arguments(parser: "argparse.ArgumentParser", cls: type, names: Iterable[str] | None = None) -> None:
    """``--name VALUE`` for each field (all by default), help from the field; values stay strings
    (default None: not given) and are parsed by :func:`from_mapping`, so a bad one is the same line."""
    for name in names or options_of(cls):
        opt = options_of(cls)[name]
        flags = [f"--{name}", *(f"--{alias}" for alias in opt.aliases)]
        parser.add_argument(*flags, dest=name, default=None, metavar=opt.metavar or name.upper(),
                            help=help_text(cls, name).replace("%", "%%"))


def click_option(cls: type, name: str, *flags: str, **kwargs: Any) -> Callable[[T], T]:
    """A click option for field ``name`` (flags default to ``--name``): help from the field and the
    value parsed by the field's parser, so a bad value is the config's one-line ConfigError."""
    import click

    opt = options_of(cls)[name]

    def convert(ctx: Any, param: Any, value: Any) -> Any:
        return None if value is None else parse_value(cls, name, value)

    required = kwargs.pop("required", False)
    default = None if required else kwargs.pop("default", opt.default)
    kwargs.setdefault("type", click.STRING)  # the field's parser converts, not click's own types
    return click.option(*(flags or (f"--{name}",)), name, default=default, required=required,
                        show_default=not required and default not in (None, ""), help=opt.help,
                        metavar=kwargs.pop("metavar", opt.metavar or name.upper()), callback=convert, **kwargs)
