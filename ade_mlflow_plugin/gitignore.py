"""Git's ignore rules during a directory walk: every .gitignore on the way down, as git reads them.

Shared by the project packager (what is shipped) and the dataset walker (what is trained on), so both
leave out exactly what `git status` leaves out: `.git/info/exclude` first, then the root .gitignore,
then each deeper .gitignore, a later match overriding an earlier one (so `!keep.py` in a subfolder
re-includes what the root ignored). Paths inside an ignored directory are never reached: the walkers
skip such directories, as git does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pathspec


def _spec(path: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:  # absent, a folder, or unreadable: no rules from it
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


@dataclass(frozen=True)
class IgnoreRules:
    """The ignore files that apply inside one directory: (folder relative to the root, its rules)."""

    specs: tuple[tuple[str, pathspec.GitIgnoreSpec], ...] = ()
    forced: pathspec.GitIgnoreSpec | None = None  # the caller's own excludes: no .gitignore re-includes them

    @classmethod
    def at_root(cls, root: Path, extra: tuple[str, ...] | list[str] = ()) -> "IgnoreRules":
        """Rules for the root folder: .git/info/exclude, then the root .gitignore; ``extra`` patterns (e.g. a
        command line's --exclude) always exclude, whatever a .gitignore says."""
        found = [s for s in (_spec(root / ".git" / "info" / "exclude"), _spec(root / ".gitignore")) if s]
        forced = pathspec.GitIgnoreSpec.from_lines(extra) if extra else None
        return cls(tuple(("", spec) for spec in found), forced)

    def descend(self, directory: Path, rel_dir: str) -> "IgnoreRules":
        """Rules inside ``directory`` (``rel_dir`` relative to the root, no trailing slash): its own .gitignore
        added last, so it wins over its parents'."""
        own = _spec(directory / ".gitignore")
        if own is None:
            return self
        return IgnoreRules(self.specs + ((rel_dir.rstrip("/"), own),), self.forced)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether the path ``rel`` (relative to the root) is ignored; the last rule that matches decides."""
        verdict = False
        candidate = rel.rstrip("/") + ("/" if is_dir else "")
        if self.forced is not None and self.forced.match_file(candidate):
            return True
        for base, spec in self.specs:
            sub = candidate[len(base) + 1:] if base else candidate
            result = spec.check_file(sub)
            if result.include is not None:
                verdict = result.include
        return verdict
