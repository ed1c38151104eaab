"""A state file recording every process a run started, so a crashed run can be cleaned up.

The file holds the owner (the runner or test session: pid + start time) and each child
it started (name, pid, process start time, how to stop it). On the next start, if the
owner is dead, its recorded processes that are still alive *with the same start time*
are stopped: a pid the OS has since reused for something else is never touched. Only
processes recorded here are ever killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent


def devstack_dir() -> Path:
    """Where state, logs and the dev database live: `$DEVSTACK_DIR` or `<repo>/.devstack`."""
    override = os.environ.get("DEVSTACK_DIR")
    return Path(override).resolve() if override else REPO_ROOT / ".devstack"


class StackAlreadyRunning(RuntimeError):
    pass


@dataclass
class Entry:
    name: str
    pid: int
    create_time: float
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0


@dataclass
class _Content:
    owner_pid: int
    owner_create_time: float
    processes: list[Entry] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_same_process(pid: int, recorded_create_time: float) -> bool:
    """True if `pid` is alive and is the very process recorded (not a reused pid)."""
    actual = create_time(pid)
    if actual is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return abs(actual - recorded_create_time) < 0.05


def _read(path: Path) -> _Content | None:
    try:
        raw = json.loads(path.read_text())
        return _Content(
            owner_pid=int(raw["owner_pid"]),
            owner_create_time=float(raw["owner_create_time"]),
            processes=[Entry(**p) for p in raw.get("processes", [])],
            info=dict(raw.get("info", {})),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign file: nothing we can trust to kill


def stop_entries(entries: list[Entry], timeout: float | None = None) -> list[Entry]:
    """Stop the recorded processes that are still the same processes.

    Each gets its own stop signal at once; after the longest stop timeout (or `timeout`)
    whatever is left, with its children, is SIGKILLed. Returns the entries acted on.
    """
    victims: list[tuple[Entry, psutil.Process, list[psutil.Process]]] = []
    for entry in entries:
        if not is_same_process(entry.pid, entry.create_time):
            continue
        try:
            proc = psutil.Process(entry.pid)
            victims.append((entry, proc, proc.children(recursive=True)))
            proc.send_signal(entry.stop_signal)
        except psutil.NoSuchProcess:
            continue
    if not victims:
        return []
    wait = timeout if timeout is not None else max(e.stop_timeout for e, _, _ in victims)
    _, alive = psutil.wait_procs([p for _, p, _ in victims], timeout=wait)
    rest = [*alive, *(c for _, _, children in victims for c in children)]
    for proc in rest:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(rest, timeout=5)
    return [e for e, _, _ in victims]


class StateFile:
    """The state file of one owner (a `devstack` runner, or one test session)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._content: _Content | None = None

    # -- reading another owner's file ------------------------------------------------------

    def live_owner(self) -> int | None:
        """The pid of the owner of the current file if that owner is still running."""
        content = _read(self.path)
        if content is None or content.owner_pid == os.getpid():
            return None
        if is_same_process(content.owner_pid, content.owner_create_time):
            return content.owner_pid
        return None

    def info(self) -> dict[str, Any]:
        """The `info` of the file if its owner is alive (e.g. the exported addresses)."""
        content = _read(self.path)
        if content is None or not is_same_process(content.owner_pid, content.owner_create_time):
            return {}
        return content.info

    def reap(self) -> list[Entry]:
        """Stop what a dead owner left running, and remove its file.

        Raises StackAlreadyRunning if the owner is alive (never kill a live run's children).
        """
        content = _read(self.path)
        if content is None:
            self.path.unlink(missing_ok=True)
            return []
        owner = self.live_owner()
        if owner is not None:
            raise StackAlreadyRunning(
                f"another run (pid {owner}) owns {self.path}; stop it first (Ctrl-C there)"
            )
        stopped = stop_entries(list(reversed(content.processes)))
        _remove_paths(content.info.get("cleanup", []))
        self.path.unlink(missing_ok=True)
        return stopped

    # -- owning the file --------------------------------------------------------------------

    def claim(self) -> list[Entry]:
        """Reap leftovers of a crashed earlier owner, then make this process the owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stopped = self.reap()
        me = os.getpid()
        self._content = _Content(owner_pid=me, owner_create_time=create_time(me) or 0.0)
        self._write()
        return stopped

    def record(
        self, name: str, pid: int, stop_signal: int = signal.SIGTERM, stop_timeout: float = 10.0
    ) -> None:
        assert self._content is not None, "claim() first"
        started = create_time(pid)
        if started is None:
            return  # already gone
        self._content.processes.append(
            Entry(name, pid, started, int(stop_signal), float(stop_timeout))
        )
        self._write()

    def forget(self, pid: int) -> None:
        if self._content is None:
            return
        self._content.processes = [p for p in self._content.processes if p.pid != pid]
        self._write()

    def set_info(self, **info: Any) -> None:
        assert self._content is not None, "claim() first"
        self._content.info.update(info)
        self._write()

    def add_cleanup(self, path: Path) -> None:
        """A file or directory to delete if this owner dies before removing it itself."""
        assert self._content is not None, "claim() first"
        self._content.info.setdefault("cleanup", []).append(str(path))
        self._write()

    def stop_all(self) -> list[Entry]:
        """Stop everything still recorded (last started first) and remove the file."""
        if self._content is None:
            return []
        stopped = stop_entries(list(reversed(self._content.processes)))
        self.release()
        return stopped

    def release(self) -> None:
        content = _read(self.path)
        if content is not None and content.owner_pid == os.getpid():
            self.path.unlink(missing_ok=True)
        self._content = None

    def _write(self) -> None:
        assert self._content is not None
        data = asdict(self._content)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)


def _remove_paths(paths: list[str]) -> None:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def reap_dir(directory: Path, pattern: str = "*.json") -> list[Entry]:
    """Reap every state file in `directory` whose owner is dead (test sessions)."""
    stopped: list[Entry] = []
    if not directory.is_dir():
        return stopped
    for path in sorted(directory.glob(pattern)):
        state = StateFile(path)
        if state.live_owner() is None:
            stopped += state.reap()
    return stopped
