"""`ade-mlflow --help` and usage errors stay fast: they must not import mlflow (~1.3 s), yet AdeErrors
raised by a verb still print one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from ade_mlflow_plugin.cli import COMMANDS, cli

# Runs the CLI's console entry in a fresh interpreter and reports, at exit, whether mlflow got imported.
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('MLFLOW_IMPORTED=%s' % any(m == 'mlflow' or m.startswith('mlflow.') "
         "for m in sys.modules)))\n"
         "from ade_mlflow_plugin.cli import main\n"
         "main(sys.argv[1:])\n")


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_verb_without_importing_mlflow():
    result = _probe("--help")
    assert result.returncode == 0, result.stderr
    assert "MLFLOW_IMPORTED=False" in result.stdout, result.stdout
    for verb in COMMANDS:
        assert f"  {verb} " in result.stdout, (verb, result.stdout)


def test_installed_console_script_help_lists_the_verbs():
    script = Path(sys.executable).with_name("ade-mlflow")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: ade-mlflow" in result.stdout
    for verb in ("launch", "status", "logs", "cost", "promote", "sync", "webhook-server"):
        assert f"  {verb} " in result.stdout, (verb, result.stdout)


def test_usage_errors_exit_2_without_importing_mlflow():
    for args, words in ((["nosuch"], "No such command 'nosuch'"), (["--bogus"], "No such option '--bogus'")):
        result = _probe(*args)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "MLFLOW_IMPORTED=False" in result.stdout, (args, result.stdout)


# Every verb the group lists, so a verb added later is covered without editing this file.
VERBS = cli.list_commands(click.Context(cli))


@pytest.mark.parametrize("verb", VERBS)
def test_verb_help_does_not_import_mlflow(verb):
    result = _probe(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert f" {verb} [OPTIONS]" in result.stdout, result.stdout  # prog name is "-c" under python -c
    assert "MLFLOW_IMPORTED=False" in result.stdout, (verb, result.stdout)


def _has_required_param(verb: str) -> bool:
    command = cli.get_command(click.Context(cli), verb)
    return any(param.required for param in command.params)


@pytest.mark.parametrize("verb", VERBS)
def test_verb_usage_errors_exit_2_without_importing_mlflow(verb):
    cases = [(["--no-such-option"], "No such option '--no-such-option'")]
    if _has_required_param(verb):  # with no arguments at all, click names the first missing one
        cases.append(([], "Missing "))
    for args, words in cases:
        result = _probe(verb, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert "MLFLOW_IMPORTED=False" in result.stdout, (verb, args, result.stdout)


def test_verb_config_error_is_still_one_line(tmp_path):
    # The verb imports errors.py (and so mlflow); the entry must still turn its ConfigError into one line.
    result = _probe("prepare-data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                    "--num-examples", "5", "--synthetic-ratio", "0.5", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ade-mlflow: error: "), result.stderr
    assert "does not exist" in lines[0]
