"""No secret reaches an example; the cheap pre-filter keeps every line detect-secrets would flag."""
from __future__ import annotations

from pathlib import Path

import pytest

from ade_mlflow_plugin.adapters.detect_secrets import flagged_line_numbers
from ade_mlflow_plugin.dataset import build_dataset, dedup, examples
from ade_mlflow_plugin.dataset.mine import mine_file
from ade_mlflow_plugin.dataset.pool import mine_all
from ade_mlflow_plugin.dataset.prompts import Formatter
from ade_mlflow_plugin.secret_scan import candidate_rows, configure, private_key_rows, secret_rows
from ade_mlflow_plugin.dataset.walk import SourceFile, walk_codebase
from tests.dataset.conftest import PLANTED_SECRETS, all_text

# One line per detect-secrets plugin (all values fake), as they appear in code.
PLUGIN_LINES = [
    'artifactory = "AKCp8jQ5vT9mZr2XbN6wLc4YdF7gH1kS3aE0uI"',
    "password: AP6xxxxxxxxxxxxxxxx1",
    "token = AP6abcdefgh1234",
    'aws_key = "AKIAZ7XQ3MPLWQKEGRTV"',
    'aws_secret_access_key = "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"',
    'conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=' + "a1B2" * 22 + '"',
    'url = "https://user:Zq8vR2mLw4tY@example.com/path"',
    'cloudant_password = "' + "0a1b2c3d" * 8 + '"',
    'discord = "MTA5NzQ2NjU0MjM5ODc2NzE0Ng.GxYzAb.abcdefghijklmnopqrstuvwxyz0"',
    'gh = "ghp_4fJ8kL2mN6pQ9rS3tU7vW1xY5zA0bC8dE2fG"',
    'gl = "glpat-Ab3dEf6hIj9kLm2nOp5q"',
    'blob = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG9mcmVk"',
    'digest = "8d6f9a0b1c2e3f4a5b6c7d8e9f0a1b2c"',
    'ibm_cloud_iam_key = "abcDEF123456ghiJKL789012mnoPQR345678stuVWXyz"',
    'cos_hmac_secret_access_key = "' + "0123456789abcdef" * 3 + '"',
    'jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"',
    'db_password = "Tr0ub4dor-horse-Battery9"',
    'mailchimp = "0123456789abcdef0123456789abcdef-us12"',
    "//registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz0123456789",
    'openai = "sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst"',
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    'pypi = "pypi-AgEIcHlwaS5vcmcCJGU3YmUyN2VjLWM2NTMtNGE2ZC1iNzE0LTA2YjY4YjE1ZDVjMAACJXsicGVybWlzc2lvbnMiOiAidXNlciIsICJ2ZXJzaW9uIjogMX0AAAYgZ"',
    'sendgrid = "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"',
    'slack = "xoxb-2048150473-1024718239461-Kx9QwErTyUiOpAsDfGhJkLzX"',
    'softlayer_api_key = "' + "abcdef0123456789" * 4 + '"',
    'square = "sq0csp-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq"',
    'stripe = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"',
    'telegram = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"',
    'twilio = "AC' + "0123456789abcdef" * 2 + '"',
]


def _full_scan_rows(lines: list[str], path: str) -> set[int]:
    """detect-secrets over every line, no pre-filter: the reference."""
    configure()
    return {number - 1 for number in flagged_line_numbers(list(enumerate(lines, 1)), path)}


def test_prefilter_keeps_every_line_a_full_scan_flags(codebase):
    text = "\n".join(PLUGIN_LINES)
    flagged = _full_scan_rows(PLUGIN_LINES, "fixture.py")
    assert len(flagged) >= len(PLUGIN_LINES) - 1  # every plugin but Telegram (filtered) fires
    assert flagged <= set(candidate_rows(text))
    assert flagged <= secret_rows(text, PLUGIN_LINES, "fixture.py")
    for path in sorted(codebase.rglob("*.py")) + sorted(codebase.rglob("*.go")):
        file_text = path.read_text(errors="replace")
        lines = file_text.split("\n")
        assert _full_scan_rows(lines, str(path)) <= secret_rows(file_text, lines, str(path)), path


def test_prefilter_is_selective_on_ordinary_code():
    ordinary = Path(examples.__file__).read_text()
    assert len(candidate_rows(ordinary)) < len(ordinary.split("\n")) / 10


def test_private_key_block_is_marked_whole():
    lines = ['KEY = """-----BEGIN EC PRIVATE KEY-----', "MHcCAQEEIBase64Line1", "Base64Line2==",
             '-----END EC PRIVATE KEY-----"""', "def after(): pass"]
    assert private_key_rows(lines) == {0, 1, 2, 3}
    assert secret_rows("\n".join(lines), lines, "k.py") >= {0, 1, 2, 3}


def test_units_touching_secrets_are_dropped_others_kept(codebase):
    mined = mine_file(SourceFile("src/app/settings.py", str(codebase / "src/app/settings.py"), "python", 1))
    names = [u.name for u in mined.units]
    assert names == ["harmless_helper", "env_or_default"]
    assert mined.drops["unit_secret"] == 3


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_planted_secrets_never_appear_in_the_dataset(codebase, ratio):
    prepared = build_dataset(codebase, None, num_examples=100_000, synthetic_ratio=ratio,
                             log_to_mlflow=False, progress=False)
    text = all_text(prepared)
    for secret in PLANTED_SECRETS:
        assert secret not in text, secret
    assert "harmless_helper" in text or ratio == 1.0
    assert prepared.stats["drops"]["unit_secret"] == 3


def test_planted_secrets_never_appear_in_any_candidate(codebase, chat_tokenizer):
    """Every example that could be selected, not only a sample, is free of secrets."""
    files = mine_all(walk_codebase(codebase).files, progress=False)
    kept, _ = dedup.dedup_units(files)
    dedup.drop_repeating_chunks(files, kept)
    mined, synthetic = examples.candidates(files, kept)
    renderer = examples.Renderer(files, Formatter(chat_tokenizer), seed=1)
    rendered = [renderer.render(c) for c in mined + synthetic]
    assert len(rendered) > 50
    text = "\n".join(e.prompt + e.completion for e in rendered)
    for secret in PLANTED_SECRETS:
        assert secret not in text, secret


def test_drop_secret_lines_and_rows_index_newline_split():
    from ade_mlflow_plugin.secret_scan import drop_secret_lines

    text = 'a = 1\fb = 2\nDB_PASSWORD = "Tr0ub4dor-horse-Battery9"\r\nc = 3\n'
    assert secret_rows(text, text.split("\n"), "x.py") == {1}
    assert secret_rows(text, text.splitlines(keepends=True), "x.py") == {1}  # other splits are redone
    assert drop_secret_lines(text) == "a = 1\fb = 2\nc = 3\n"
