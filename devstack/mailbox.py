"""A local mailbox for `make run`: the notifier's e-mails land in `.devstack/mail`.

An aiosmtpd SMTP server in a thread of the runner (it stops with the runner), storing
every message in a Maildir, so a developer can read what debtors would receive without
any mail server on the machine.
"""

from __future__ import annotations

from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from devstack.procs import free_port


class LocalMailbox:
    def __init__(self, directory: Path) -> None:
        for part in ("tmp", "new", "cur"):  # a Maildir
            (directory / part).mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self._controller = Controller(Mailbox(directory), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
