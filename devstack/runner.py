"""`python -m devstack run|up`: the embedded stack plus the five services (and the
agency simulator), supervised."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.broker import BrokerHandle, start_broker
from devstack.mailbox import LocalMailbox
from devstack.postgres import PostgresHandle, start_postgres
from devstack.procs import die_with_parent, port_is_free
from devstack.state import REPO_ROOT, StackAlreadyRunning, StateFile, devstack_dir

SERVICES: tuple[tuple[str, int], ...] = (
    ("invoice", 8081),
    ("scheduler", 8082),
    ("notifier", 8083),
    ("subscription", 8084),
    ("collection", 8085),
)
#: Outside actors started next to the services, as (name, module): no HTTP port, no
#: health check. Left out when `--service-cmd` replaces the services (stand-ins), unless
#: named in `--services`.
ADAPTERS: tuple[tuple[str, str], ...] = (("agency-sim", "services.collection.agency_sim"),)
#: The merchant console (services/console): started after the services, on the port after
#: theirs (or any free one), with a demo login for the README walkthrough's merchant. Left
#: out like the adapters when `--service-cmd` replaces the services, unless named.
CONSOLE = "console"
CONSOLE_DEMO_USER = "demo"
CONSOLE_DEMO_WEBSITE_KEY = "shop-1"
DATABASE = "cm"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_PG_PORT = 5432
SERVICE_STOP_TIMEOUT = 10.0
_WIDTH = max(len(name) for name, _ in SERVICES) + 2
_COLOURS = ("36", "33", "35", "32", "34", "31", "96")


def state_file() -> StateFile:
    return StateFile(devstack_dir() / "state.json")


def local_secret_key() -> str:
    """The notifier's CM_SECRET_KEY for local runs: generated once and kept in the state
    dir (`secret.key`, readable by its owner only), so webhook secrets stored in the dev
    database stay readable from one `make run` to the next."""
    path = devstack_dir() / "secret.key"
    if not path.exists():
        from cryptography.fernet import Fernet  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(Fernet.generate_key().decode() + "\n")
    return path.read_text().strip()


def console_demo_password() -> str:
    """The demo login's password: random, generated once per state dir and kept there
    (`console-demo.txt`, readable by its owner only)."""
    path = devstack_dir() / "console-demo.txt"
    if not path.exists():
        import secrets  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(12) + "\n")
    return path.read_text().strip()


async def ensure_console_demo_user(dsn: str) -> str:
    """Create (or reset) the console's demo login; returns its password."""
    from services.console.accounts import add_user  # noqa: PLC0415

    password = console_demo_password()
    await add_user(
        dsn,
        CONSOLE_DEMO_USER,
        CONSOLE_DEMO_WEBSITE_KEY,
        password,
        culture="nl-NL",
        time_zone="Europe/Amsterdam",
        replace_password=True,
    )
    return password


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_service_env() -> dict[str, str]:
    """What services get in a local run unless the environment says otherwise: the
    notifier's key, and webhooks to loopback/private receivers over http allowed."""
    return {
        "CM_SECRET_KEY": os.environ.get("CM_SECRET_KEY") or local_secret_key(),
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": os.environ.get("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
    }


def _use_colour() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


class Console:
    def __init__(self) -> None:
        self.colour = _use_colour()

    def prefix(self, name: str, index: int) -> bytes:
        label = f"[{name}]".ljust(_WIDTH)
        if self.colour:
            label = f"\x1b[{_COLOURS[index % len(_COLOURS)]}m{label}\x1b[0m"
        return f"{label} ".encode()

    def write(self, prefix: bytes, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()

    def say(self, text: str, *, error: bool = False) -> None:
        label = "[devstack]".ljust(_WIDTH)
        if self.colour:
            label = f"\x1b[1;{'31' if error else '37'}m{label}\x1b[0m"
        for line in text.splitlines() or [""]:
            sys.stdout.write(f"{label} {line}\n")
        sys.stdout.flush()


@dataclass
class Service:
    name: str
    port: int | None  # None: an adapter, without /healthz
    index: int
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    exited: asyncio.Task[int] | None = field(default=None, repr=False)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


def _pick_port(requested: int | None, preferred: int) -> int | None:
    """None: the preferred port if free else any free port; 0: any free port."""
    if requested is not None:
        return requested or None
    return preferred if port_is_free(preferred) else None


def service_command(name: str, template: str | None) -> list[str]:
    if not template:
        return [sys.executable, "-m", f"services.{name}"]
    return [part.format(name=name, python=sys.executable) for part in shlex.split(template)]


async def http_status(port: int, path: str = "/healthz", limit_s: float = 1.0) -> int | None:
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        parts = status_line.split()
        return int(parts[1]) if len(parts) >= 2 else None
    except (OSError, TimeoutError, ValueError):
        return None


async def ensure_database(dsn: str, name: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", name)
        if not exists:
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()


class Stack:
    """Broker + Postgres (+ services), each recorded in the state file as it starts."""

    def __init__(self, console: Console, state: StateFile) -> None:
        self.console = console
        self.state = state
        self.broker: BrokerHandle | None = None
        self.mailbox: LocalMailbox | None = None
        self.postgres: PostgresHandle | None = None
        self.services: list[Service] = []
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        self.stopping = False
        self._first_signal_at = 0.0

    # -- signals ----------------------------------------------------------------------------

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        now = time.monotonic()
        if not self.stop_requested.is_set():
            self.console.say(f"{name}: stopping (again to kill at once)")
            self.stop_requested.set()
            self._first_signal_at = now
        elif now - self._first_signal_at > 1.0:
            # Within a second it is the same Ctrl-C delivered twice (the terminal signals
            # the whole process group, and `uv run` may forward it as well).
            self.console.say(f"{name} again: killing what is left")
            self.force.set()

    # -- infrastructure ---------------------------------------------------------------------

    def start_infra(self, kafka_port: int | None, pg_port: int | None) -> dict[str, str]:
        """Start (or take from the environment) the broker and Postgres; return the env."""
        env: dict[str, str] = {}
        external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external_kafka:
            self.console.say(f"kafka: using KAFKA_BOOTSTRAP_SERVERS={external_kafka}")
            env["KAFKA_BOOTSTRAP_SERVERS"] = external_kafka
        else:
            port = _pick_port(kafka_port, DEFAULT_KAFKA_PORT)
            self.broker = start_broker(port, log_path=devstack_dir() / "broker.log")
            self.state.record("broker", self.broker.pid, signal.SIGKILL, 1.0)
            self.console.say(
                f"kafka: tansu on {self.broker.bootstrap_servers} (pid {self.broker.pid}, "
                f"{self.broker.startup_s:.2f} s, memory storage)"
            )
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap_servers
        external_db = os.environ.get("DATABASE_URL")
        if external_db:
            self.console.say("postgres: using DATABASE_URL from the environment")
            env["DATABASE_URL"] = external_db
        else:
            port = _pick_port(pg_port, DEFAULT_PG_PORT)
            started = time.monotonic()
            self.postgres = start_postgres(
                devstack_dir() / "pgdata", port, log_path=devstack_dir() / "postgres.log"
            )
            self.state.record("postgres", self.postgres.pid, signal.SIGINT, 10.0)
            self.console.say(
                f"postgres: 127.0.0.1:{self.postgres.port} (pid {self.postgres.pid}, "
                f"{time.monotonic() - started:.2f} s incl. setup, "
                f"data {self.postgres.data_dir})"
            )
            env["DATABASE_URL"] = self.postgres.dsn_for(DATABASE)
        self.state.set_info(env=env)
        return env

    def infra_problem(self) -> str | None:
        if self.broker is not None and not self.broker.alive():
            return f"the broker (pid {self.broker.pid}) died; see {devstack_dir() / 'broker.log'}"
        if self.postgres is not None and not self.postgres.alive():
            return f"postgres (pid {self.postgres.pid}) died; see {devstack_dir() / 'postgres.log'}"
        return None

    # -- services ---------------------------------------------------------------------------

    async def start_service(self, service: Service, cmd: list[str], env: dict[str, str]) -> None:
        preexec = die_with_parent(signal.SIGTERM)
        service.process = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            limit=1 << 20,
        )
        self.state.record(service.name, service.process.pid, signal.SIGTERM, SERVICE_STOP_TIMEOUT)
        service.pump = asyncio.create_task(self._pump(service))
        service.exited = asyncio.create_task(service.process.wait())

    async def _pump(self, service: Service) -> None:
        assert service.process is not None and service.process.stdout is not None
        prefix = self.console.prefix(service.name, service.index)
        stream = service.process.stdout
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: pass it on in pieces
                line = await stream.read(1 << 20)
            if not line:
                return
            self.console.write(prefix, line)

    async def stop_services(self) -> None:
        live = [s for s in self.services if s.process and s.process.returncode is None]
        for service in live:
            assert service.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGTERM)
        waits = [s.exited for s in live if s.exited is not None]
        if waits:
            force: asyncio.Future[Any] = asyncio.ensure_future(self.force.wait())
            everyone: asyncio.Future[Any] = asyncio.gather(*waits)
            await asyncio.wait(
                [force, everyone],
                timeout=SERVICE_STOP_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            force.cancel()
        for service in live:
            assert service.process is not None
            if service.process.returncode is None:
                self.console.say(f"{service.name} did not stop in time: SIGKILL", error=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
        for service in live:
            assert service.process is not None
            await service.process.wait()
            if service.pump is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(service.pump, 2)
            self.state.forget(service.process.pid)

    async def shutdown(self) -> None:
        self.stopping = True
        await self.stop_services()
        if self.mailbox is not None:
            self.mailbox.stop()
        if self.postgres is not None:
            self.postgres.stop()
            self.state.forget(self.postgres.pid)
        if self.broker is not None:
            self.broker.stop()
            self.state.forget(self.broker.pid)
        self.state.stop_all()  # anything still recorded (nothing, normally); removes the file

    # -- waiting ----------------------------------------------------------------------------

    async def wait_for_trouble(self, deadline: float | None = None) -> str | None:
        """Block until a stop request (None), a dead child (its description), or the
        deadline (\"deadline\")."""
        while True:
            if self.stop_requested.is_set():
                return None
            problem = self.infra_problem()
            if problem:
                return problem
            for service in self.services:
                if service.exited is not None and service.exited.done():
                    return f"service {service.name} exited with code {service.exited.result()}"
            if deadline is not None and time.monotonic() >= deadline:
                return "deadline"
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.stop_requested.wait())]
            waits += [s.exited for s in self.services if s.exited is not None]
            timeout = 0.5
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()

    async def wait_healthy(self, within_s: float) -> list[str]:
        """Poll every /healthz until all answer 200; return the names still unhealthy."""
        deadline = time.monotonic() + within_s
        pending = {s.name: s.port for s in self.services if s.port is not None}
        while pending:
            statuses = await asyncio.gather(*(http_status(port) for port in pending.values()))
            for name, status in zip(list(pending), statuses, strict=True):
                if status == 200:
                    self.console.say(f"{name} is healthy")
                    del pending[name]
            if not pending:
                break
            trouble = await self.wait_for_trouble(min(deadline, time.monotonic() + 0.2))
            if trouble != "deadline":
                raise _Trouble(trouble)
            if time.monotonic() >= deadline:
                break
        return sorted(pending)


class _Trouble(Exception):
    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


async def run(
    *,
    with_services: bool,
    kafka_port: int | None = None,
    pg_port: int | None = None,
    service_cmd: str | None = None,
    only: Sequence[str] | None = None,
    health_timeout: float = 60.0,
    http_port_base: int = 8081,
) -> int:
    console = Console()
    state = state_file()
    try:
        reaped = state.claim()
    except StackAlreadyRunning as err:
        console.say(str(err), error=True)
        return 1
    for entry in reaped:
        console.say(f"stopped a leftover of a crashed earlier run: {entry.name} (pid {entry.pid})")
    stack = Stack(console, state)
    stack.install_signals()
    started = time.monotonic()
    code = 0
    try:
        env = stack.start_infra(kafka_port, pg_port)
        if stack.postgres is not None:
            await ensure_database(stack.postgres.dsn, DATABASE)
        if not with_services:
            console.say("stack is up; for a service run by hand:")
            print(_exports(env | local_service_env()), flush=True)
            console.say("Ctrl-C stops it.")
            trouble = await stack.wait_for_trouble()
            if trouble:
                console.say(f"FAILED: {trouble}", error=True)
                code = 1
            return code
        base_env = dict(os.environ)
        base_env.setdefault("LOG_FORMAT", "console")
        base_env.setdefault("CM_CLOCK", "system")
        # The embedded broker joins a group in max(1 s, session timeout / 2): keep it short.
        base_env.setdefault("KAFKA_SESSION_TIMEOUT_MS", "2000")
        base_env.setdefault("KAFKA_HEARTBEAT_INTERVAL_MS", "500")
        base_env["PYTHONUNBUFFERED"] = "1"
        base_env.update(env)
        base_env.update(local_service_env())
        if "SMTP_HOST" not in os.environ:
            mailbox = LocalMailbox(devstack_dir() / "mail")
            mailbox.start()
            stack.mailbox = mailbox
            base_env |= {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(mailbox.port)}
        base_env.setdefault("LETTER_SPOOL_DIR", str(devstack_dir() / "letters"))
        names = list(only) if only else [name for name, _ in SERVICES]
        known = {name for name, _ in SERVICES} | {name for name, _ in ADAPTERS} | {CONSOLE}
        unknown = sorted(set(names) - known)
        if unknown:
            console.say(f"unknown services: {', '.join(unknown)}", error=True)
            return 2
        for index, (name, default_port) in enumerate(SERVICES):
            if name not in names:
                continue
            port = http_port_base + (default_port - 8081)
            service = Service(name, port, index)
            stack.services.append(service)
            service_env = base_env | {"HTTP_PORT": str(port)}
            await stack.start_service(service, service_command(name, service_cmd), service_env)
        for index, (name, module) in enumerate(ADAPTERS, start=len(SERVICES)):
            wanted = name in only if only else service_cmd is None
            if wanted:
                adapter = Service(name, None, index)
                stack.services.append(adapter)
                await stack.start_service(adapter, [sys.executable, "-m", module], base_env)
        console_login: str | None = None
        if (CONSOLE in only) if only else service_cmd is None:
            console_port = http_port_base + len(SERVICES)
            if not port_is_free(console_port):
                console_port = _free_port()
            console_login = await ensure_console_demo_user(base_env["DATABASE_URL"])
            web = Service(CONSOLE, console_port, len(SERVICES) + len(ADAPTERS))
            stack.services.append(web)
            web_env = base_env | {"HTTP_PORT": str(console_port)}
            # Plain http on loopback: cookies without the Secure flag, unless told otherwise.
            web_env.setdefault("CONSOLE_COOKIE_SECURE", "false")
            await stack.start_service(web, service_command(CONSOLE, None), web_env)
        try:
            unhealthy = await stack.wait_healthy(health_timeout)
        except _Trouble as trouble:
            if trouble.reason is None:
                return 0
            console.say(f"FAILED: {trouble.reason}; stopping everything", error=True)
            return 1
        if unhealthy:
            console.say(
                f"FAILED: no 200 from /healthz of {', '.join(unhealthy)} within "
                f"{health_timeout:.0f} s; stopping everything",
                error=True,
            )
            return 1
        checked = [s for s in stack.services if s.port is not None and s.name != CONSOLE]
        lines = [
            f"all {len(checked)} services healthy in {time.monotonic() - started:.1f} s",
            "",
        ]
        lines.append(f"  kafka     {env['KAFKA_BOOTSTRAP_SERVERS']}")
        lines.append(f"  postgres  {env['DATABASE_URL']}")
        if stack.mailbox is not None:
            lines.append(f"  e-mail    {stack.mailbox.directory} (Maildir)")
        lines.append(f"  letters   {base_env['LETTER_SPOOL_DIR']}")
        for service in stack.services:
            if service.name == CONSOLE:
                continue
            where = service.health_url if service.port is not None else "(no HTTP)"
            lines.append(f"  {service.name:<12}  {where}")
        for service in stack.services:
            if service.name == CONSOLE:
                lines += [
                    "",
                    f"  console   http://127.0.0.1:{service.port}/",
                    f"            sign in as {CONSOLE_DEMO_USER} / {console_login}"
                    f" (merchant {CONSOLE_DEMO_WEBSITE_KEY})",
                ]
        lines += ["", "  cm topics | cm tail cm.invoice.events --follow | Ctrl-C stops all"]
        console.say("\n".join(lines))
        problem = await stack.wait_for_trouble()
        if problem:
            console.say(f"FAILED: {problem}; stopping everything", error=True)
            code = 1
        return code
    except Exception as err:
        console.say(f"FAILED: {type(err).__name__}: {err}", error=True)
        return 1
    finally:
        await stack.shutdown()
        console.say("stopped: nothing left running")


def default_service_cmd() -> str | None:
    return os.environ.get("DEVSTACK_SERVICE_CMD") or None


def pgdata_dir() -> Path:
    return devstack_dir() / "pgdata"
