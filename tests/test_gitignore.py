"""gitignore.IgnoreRules: git's precedence (info/exclude < root .gitignore < deeper .gitignore), negation."""
from __future__ import annotations

from ade_mlflow_plugin.dataset.walk import walk_codebase
from ade_mlflow_plugin.gitignore import IgnoreRules


def test_deeper_rules_win_and_exclude_is_weakest(tmp_path):
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("*.py\n")
    (tmp_path / ".gitignore").write_text("!*.py\ngen/\n*.log\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / ".gitignore").write_text("!app.log\nsecret_*.py\n")
    root = IgnoreRules.at_root(tmp_path)
    inner = root.descend(tmp_path / "pkg", "pkg")
    assert not root.ignored("main.py", is_dir=False)  # .gitignore's !*.py beats info/exclude
    assert root.ignored("gen", is_dir=True) and not root.ignored("gen", is_dir=False)
    assert root.ignored("pkg/app.log", is_dir=False) and not inner.ignored("pkg/app.log", is_dir=False)
    assert inner.ignored("pkg/secret_key.py", is_dir=False) and not root.ignored("pkg/secret_key.py", is_dir=False)
    assert root.descend(tmp_path / "gen", "gen") is root  # no .gitignore there: the same rules


def test_dataset_walk_and_extra_patterns_use_the_same_rules(tmp_path):
    (tmp_path / ".gitignore").write_text("drafts/\n!*_test.py\n")  # cannot re-include what --exclude drops
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / ".gitignore").write_text("old_*.py\n")
    for rel in ("a.py", "drafts/b.py", "lib/c.py", "lib/old_d.py", "lib/e_test.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("def f():\n    return 1\n")
    walked = walk_codebase(tmp_path, exclude=["*_test.py"])
    assert [f.rel for f in walked.files] == ["a.py", "lib/c.py"]
    assert walked.skipped["ignored"] == 3
