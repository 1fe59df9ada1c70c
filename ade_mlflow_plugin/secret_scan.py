"""The secret scanner (core): which lines of a text hold credentials.

One scanner for everything that must not carry a secret: the dataset drops every unit or chunk touching
a flagged line (dataset/mine.py), the tiny tokenizer is trained without them (training/tiny.py), and the
backend refuses project files and job environment values that hold one (backend/ship_scan.py, and
config/cloud.py's ``environment`` key through :func:`check_environment_values`). It lives in the core so
that none of those wings imports another.

detect-secrets (the maintained scanner) costs ~0.2 ms per line with all its plugins, far too slow for
whole codebases (the stdlib's 360k lines would take over a minute). A cheap regex pre-filter picks the
lines any detect-secrets plugin could fire on (credential keywords, known token prefixes, URLs with a
password, long key-like runs), and only those go through detect-secrets (adapters/detect_secrets.py).
tests/dataset/test_secrets.py checks that the pre-filter keeps every line a full detect-secrets scan flags.
Private key blocks are marked whole (BEGIN to END): detect-secrets flags only the BEGIN line.
detect-secrets itself is imported at the first scan, not with this module.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache

from ade_mlflow_plugin.adapters.detect_secrets import flagged_line_numbers

# Lower-cased literals whose every occurrence makes a line a candidate: credential keywords
# (detect-secrets' KeywordDetector deny-list and more) and prefixes of well-known token formats
# (AWS, GitHub, GitLab, Slack, Stripe, Square, SendGrid, JWT, PyPI, npm, OpenAI, Artifactory, ...).
# str.find per literal is ~10x faster than one big regex alternation over the same text.
_LITERALS = (
    "pwd", "secret", "contrase", "credential", "authtoken", "accountkey", "-----begin", "putty-user-key",
    "akia", "asia", "abia", "acca", "xox", "hooks.slack.com", "k_live", "eyj", "pypi-ag", "npm_", "akc",
    "t3blbkfj", "bearer", "cloudant",
)
# Keywords too common to take alone: an occurrence counts when its pattern matches around it, or when a
# long key-like value follows on its line (IBM Cloud IAM, IBM COS and SoftLayer accept any key/pass/token
# name followed by a 40-64 character value).
_CHECKED: dict[str, re.Pattern | None] = {
    "key": re.compile(r"(?:api|auth|service|account|db|database|priv|private|client|access|secret|signing"
                      r"|encryption)[_-]?key|key[_-]?pass"),
    "pass": re.compile(r"(?:db|database|key)[_-]?pass|pass(?:w|phrase)"),
    "token": None,  # no plugin fires on the word itself; only a long value after it counts
}
_CHECK_BEFORE = 16  # characters before the keyword its pattern may start at
_CHECK_AFTER = 200  # characters after it searched for a long value
_LONG_VALUE = re.compile(r"[a-z0-9_\-]{40,}")
# Patterns that start with a literal, which Python's re scans for quickly. On lower-cased text: GitHub,
# GitLab, SSH, Square prefixes, URLs with a password (Basic Auth, Cloudant), Cloudant keywords,
# Mailchimp's "-us<N>" suffix, SoftLayer's API URL.
_PREFIXED_LOW = (
    re.compile(r"gh[pousr]_"),
    re.compile(r"gl(?:pat|dt|ptt|rt|soat|cbt|imt|agent|oas|ft)-"),
    re.compile(r"ssh-(?:rsa|dss|ed25519)"),
    re.compile(r"sq0(?:csp|atp)"),
    re.compile(r"://[^\s/:@'\"]+:[^\s/@'\"]+@"),
    re.compile(r"cl(?:oudant|ou)?[_-]?(?:api)?(?:key|pwd|pw|password|pass|token)"),
    re.compile(r"-us\d"),
    re.compile(r"softlayer"),
)
# On the original text: Twilio (AC/SK + 32), Telegram (digits:35), Discord (.6.27), Artifactory (AP...),
# SendGrid (SG.22.43, case-sensitive: "msg." is everywhere in lower-cased code).
_PREFIXED = (
    re.compile(r"SG\.[a-zA-Z0-9_-]{22}\."),
    re.compile(r"AC[a-z0-9]{32}"),
    re.compile(r"SK[a-z0-9]{32}"),
    re.compile(r":[0-9A-Za-z_-]{35}"),
    re.compile(r"\.[a-zA-Z\d_-]{6}\.[a-zA-Z\d_-]{27}"),
    re.compile(r"AP[\dABCDEF][a-zA-Z0-9]{8}"),
)
# Quoted strings detect-secrets' entropy plugins examine (the whole string in their charset); only those
# above the plugins' entropy limits can fire: base64 4.5 bits (needs 23+ characters), hex 3.0 bits.
_QUOTED = re.compile(r"""(["'])([A-Za-z0-9+/=_\-]{9,})\1""")
_HEX = re.compile(r"[0-9a-fA-F]+")
_B64_LIMIT, _HEX_LIMIT, _B64_MIN = 4.5, 3.0, 23
_B64_DISTINCT, _HEX_DISTINCT = 23, 9  # fewest distinct characters that can exceed 4.5 and 3.0 bits
_KEY_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 _-]*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File")
_KEY_END = re.compile(r"-----END[A-Z0-9 _-]*PRIVATE KEY(?: BLOCK)?-----|Private-MAC:")
#: How far a private key block without an END marker is assumed to reach.
_KEY_MAX_ROWS = 100
#: Plugins left out: public IP addresses are not credentials and fill code with false positives.
_EXCLUDED_PLUGINS = frozenset({"IPPublicDetector"})


def _rows_of(text: str, offsets: list[int]) -> list[int]:
    """Sorted distinct 0-based rows of character offsets (newlines counted in C, incrementally)."""
    rows, row, prev = [], 0, 0
    for off in sorted(set(offsets)):
        row += text.count("\n", prev, off)
        prev = off
        if not rows or rows[-1] != row:
            rows.append(row)
    return rows


def _find_all(text: str, needle: str) -> list[int]:
    found, pos = [], text.find(needle)
    while pos >= 0:
        found.append(pos)
        pos = text.find(needle, pos + 1)
    return found


def _literal_offsets(low: str) -> list[int]:
    offsets = []
    for literal in _LITERALS:
        offsets += _find_all(low, literal)
    for keyword, pattern in _CHECKED.items():
        for pos in _find_all(low, keyword):
            if (pattern is not None and pattern.search(low, max(0, pos - _CHECK_BEFORE), pos + 40)) or \
                    _LONG_VALUE.search(low, pos, pos + _CHECK_AFTER):
                offsets.append(pos)
    for pattern in _PREFIXED_LOW:
        offsets += [m.start() for m in pattern.finditer(low)]
    return offsets


def _quoted_offsets(text: str) -> list[int]:
    offsets = []
    for match in _QUOTED.finditer(text):
        value = match.group(2)
        is_hex = _HEX.fullmatch(value) is not None
        if len(value) < _B64_MIN and not is_hex:
            continue
        # entropy <= log2(distinct characters): skip the count when it cannot pass either limit
        distinct = len(set(value))
        if distinct < _HEX_DISTINCT:
            continue
        entropy = _entropy(value)
        if (distinct >= _B64_DISTINCT and entropy > _B64_LIMIT) or (is_hex and entropy > _HEX_LIMIT):
            offsets.append(match.start())
    return offsets


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character, as detect-secrets computes it."""
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in Counter(value).values())


def candidate_rows(text: str) -> list[int]:
    """0-based rows a detect-secrets plugin could fire on (a superset, by design)."""
    offsets = _literal_offsets(text.lower()) + _quoted_offsets(text)
    for pattern in _PREFIXED:
        offsets += [m.start() for m in pattern.finditer(text)]
    return _rows_of(text, offsets)


def private_key_rows(lines: list[str]) -> set[int]:
    """Rows of private key blocks, BEGIN through END."""
    rows: set[int] = set()
    i = 0
    while i < len(lines):
        if _KEY_BEGIN.search(lines[i]):
            end = min(i + _KEY_MAX_ROWS, len(lines) - 1)
            for j in range(i, end + 1):
                if _KEY_END.search(lines[j]):
                    end = j
                    break
            rows.update(range(i, end + 1))
            i = end
        i += 1
    return rows


@lru_cache(maxsize=1)
def configure() -> None:
    """Enable detect-secrets' plugins (minus excluded ones) with its default filters, once per process."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline

    plugins = [{"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()
               if cls.__name__ not in _EXCLUDED_PLUGINS]
    cache_bust()
    configure_settings_from_baseline({"plugins_used": plugins})


def scan_rows(lines: list[tuple[int, str]], path: str) -> set[int]:
    """Rows among (row, line) pairs that detect-secrets flags (its plugins and file-scan filters)."""
    configure()
    numbered = [(i + 1, line) for i, (_, line) in enumerate(lines)]
    return {lines[number - 1][0] for number in flagged_line_numbers(numbered, path)}


def secret_rows(text: str, lines: list[str], path: str) -> set[int]:
    """0-based rows of text that hold a secret: pre-filter, then detect-secrets on candidates only.

    Rows index ``text.split("\\n")``, which `lines` should be; other splits are replaced by it here
    (str.splitlines also splits on \\r, \\f, \\v, \\x1c-\\x1e, \\x85 and \\u2028, so a caller indexing
    splitlines() with these rows drifts on files holding those: see drop_secret_lines).
    """
    if len(lines) != text.count("\n") + 1 or "\n".join(lines) != text:
        lines = text.split("\n")
    rows = private_key_rows(lines) if "PRIVATE KEY" in text or "PuTTY" in text else set()
    candidates = [(row, lines[row]) for row in candidate_rows(text) if row not in rows and row < len(lines)]
    if candidates:
        rows |= scan_rows(candidates, path)
    return rows


def drop_secret_lines(text: str, path: str = "") -> str:
    """text without the lines that hold a secret (for corpora outside the dataset, e.g. tokenizer training)."""
    lines = text.split("\n")
    rows = secret_rows(text, lines, path)
    return "\n".join(line for i, line in enumerate(lines) if i not in rows)


_HEX_ONLY = re.compile(r"[0-9a-fA-F]+")


def _value_lines(value: str) -> list[str]:
    """How a value is shown to the scanner: as it is (token formats: AWS key ids, GitHub, Slack, JWT, URLs
    with a password) and quoted, which lets detect-secrets' entropy plugins judge it too. A value of hex
    digits only is not quoted: commit ids and content hashes are everyday environment values, and the
    hex-entropy limit (3 bits) flags them all."""
    lines = value.splitlines() or [""]
    return lines + [f'"{line}"' for line in lines if line and not _HEX_ONLY.fullmatch(line)]


def credential_names(env: Mapping[str, str]) -> list[str]:
    """Names of the variables in ``env`` whose value looks like a credential, whatever they are called."""
    found = []
    for name, value in env.items():
        lines = _value_lines(str(value))
        if secret_rows("\n".join(lines), lines, "environment"):
            found.append(name)
    return found


def check_environment_values(env: Mapping[str, str]) -> None:
    """Refuse (ConfigError, naming the variable, never echoing the value) job environment values that look
    like credentials. DescribeTrainingJob shows the environment to anyone who may describe the job, so a
    credential there is published; the job should get it from its IAM role or a secrets manager."""
    names = credential_names(env)
    if names:
        from ade_mlflow_plugin.errors import ConfigError  # errors.py imports mlflow: only when failing

        raise ConfigError(
            f"backend-config key 'environment': the value of {names[0]} looks like a credential; job "
            "environments are visible to anyone who may describe the job (DescribeTrainingJob), so give "
            "the job an IAM role (role_arn) with the access it needs, or have it read the secret from "
            "AWS Secrets Manager")
