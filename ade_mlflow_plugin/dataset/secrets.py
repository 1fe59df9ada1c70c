"""Find source lines that hold credentials, so no unit or chunk touching them is ever trained on.

detect-secrets (the maintained scanner) costs ~0.2 ms per line with all its plugins, far too slow for
whole codebases (the stdlib's 360k lines would take over a minute). A cheap regex pre-filter picks the
lines any detect-secrets plugin could fire on (credential keywords, known token prefixes, URLs with a
password, long key-like runs), and only those go through detect-secrets. tests/dataset/test_secrets.py
checks that the pre-filter keeps every line a full detect-secrets scan flags.
Private key blocks are marked whole (BEGIN to END): detect-secrets flags only the BEGIN line.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

# Lower-cased literals whose every occurrence makes a line a candidate: credential keywords
# (detect-secrets' KeywordDetector deny-list and more) and prefixes of well-known token formats
# (AWS, GitHub, GitLab, Slack, Stripe, Square, SendGrid, JWT, PyPI, npm, OpenAI, Artifactory, ...).
# str.find per literal is ~10x faster than one big regex alternation over the same text.
_LITERALS = (
    "passw", "passphrase", "pwd", "secret", "contrase", "credential", "authtoken", "accountkey",
    "-----begin", "putty-user-key", "ssh-rsa", "ssh-dss", "ssh-ed25519", "akia", "asia", "abia", "acca",
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "gldt-", "glptt-", "glrt-", "glsoat-", "glcbt-",
    "glimt-", "glagent-", "gloas-", "glft-", "xox", "hooks.slack.com", "k_live", "sq0csp", "sq0atp",
    "sg.", "eyj", "pypi-ag", "npm_", "akc", "t3blbkfj", "bearer",
)
# Literals too common to take alone: an occurrence counts when this pattern matches around it.
_CHECKED = {
    "key": re.compile(r"(?:api|auth|service|account|db|database|priv|private|client|access|secret|signing"
                      r"|encryption)[_-]?key|key[_-]?pass"),
    "://": re.compile(r"://[^\s/:@'\"]+:[^\s/@'\"]+@"),
    "token": re.compile(r"token\s*[=:]"),
    "cl": re.compile(r"cl(?:oudant|ou)?[_-]?(?:api)?(?:key|pwd|pw|password|pass|token)"),
}
_CHECK_BEFORE = 16  # characters before the literal the check pattern may start at
# Literals matched case-sensitively with a check (Artifactory passwords: AP + hex digit + 8 more).
_CHECKED_EXACT = {"AP": re.compile(r"(?:\s|=|:|\"|^)AP[\dABCDEF][a-zA-Z0-9]{8,}(?:\s|\"|$)", re.MULTILINE)}
# Quoted strings detect-secrets' entropy plugins examine (whole string in their charset); only those
# above the plugins' entropy limits (base64 4.5, hex 3.0) can fire, and 4.5 bits needs 23+ characters.
_QUOTED_B64 = re.compile(r"""(["'])([A-Za-z0-9+/=_\-]{23,})\1""")
_QUOTED_HEX = re.compile(r"""(["'])([0-9a-fA-F]{9,})\1""")
_B64_LIMIT, _HEX_LIMIT = 4.5, 3.0
# Unquoted runs the fixed-format plugins match (Twilio, Mailchimp, Telegram, Discord, IBM, SoftLayer:
# all 24+ characters of random letters and digits).
_LONG_RUN = re.compile(r"[A-Za-z0-9+/=_\-]{24,}")
_HAS_DIGIT = re.compile(r"\d")
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
    return offsets + _checked_offsets(low, _CHECKED)


def _checked_offsets(text: str, checked: dict[str, re.Pattern]) -> list[int]:
    offsets = []
    for literal, pattern in checked.items():
        for pos in _find_all(text, literal):
            if pattern.search(text, max(0, pos - _CHECK_BEFORE), pos + 80):
                offsets.append(pos)
    return offsets


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character, as detect-secrets computes it."""
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in Counter(value).values())


def candidate_rows(text: str) -> list[int]:
    """0-based rows a detect-secrets plugin could fire on (a superset, by design)."""
    low = text.lower()
    offsets = _literal_offsets(low)
    offsets += _checked_offsets(text, _CHECKED_EXACT)
    offsets += [m.start() for m in _QUOTED_B64.finditer(text) if _entropy(m.group(2)) > _B64_LIMIT]
    offsets += [m.start() for m in _QUOTED_HEX.finditer(text) if _entropy(m.group(2)) > _HEX_LIMIT]
    offsets += [m.start() for m in _LONG_RUN.finditer(text) if _HAS_DIGIT.search(m.group())]
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
    """Rows among (row, line) pairs that detect-secrets flags."""
    # detect-secrets' own line loop (plugins + its filters); it has no public per-line API with filters.
    from detect_secrets.core.scan import _process_line_based_plugins

    configure()
    numbered = [(i + 1, line) for i, (_, line) in enumerate(lines)]
    hits = _process_line_based_plugins(numbered, filename=path)
    return {lines[secret.line_number - 1][0] for secret in hits}


def secret_rows(text: str, lines: list[str], path: str) -> set[int]:
    """0-based rows of text that hold a secret: pre-filter, then detect-secrets on candidates only."""
    rows = private_key_rows(lines) if "PRIVATE KEY" in text or "PuTTY" in text else set()
    candidates = [(row, lines[row]) for row in candidate_rows(text) if row not in rows and row < len(lines)]
    if candidates:
        rows |= scan_rows(candidates, path)
    return rows
