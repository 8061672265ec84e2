"""Where the project is: one rule for every relative path, the same for a run, the aggregation, the
report and make.

The project folder is the nearest folder, from the current directory upwards, that holds
conf/config.yaml and pyproject.toml: so `make` in a second checkout (a git worktree, another clone)
sharing one virtualenv trains, aggregates and reports in that checkout. Outside any checkout (a
script run from elsewhere) it is the checkout this package was installed from.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


def project_root() -> Path:
    """The project folder for the current directory (see the module doc)."""
    return _root_from(Path.cwd().resolve())


@lru_cache(maxsize=8)
def _root_from(cwd: Path) -> Path:
    for folder in (cwd, *cwd.parents, *Path(__file__).resolve().parents):
        if _is_project(folder):
            return folder
    return cwd


def _is_project(folder: Path) -> bool:
    return (folder / "conf" / "config.yaml").is_file() and (folder / "pyproject.toml").is_file()


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Relative paths count from the project folder, whatever Hydra's or the user's cwd."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else project_root() / expanded
