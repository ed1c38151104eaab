"""E-mail over SMTP (aiosmtplib). A 5xx answer or a refused recipient fails the channel.

An address with non-ASCII characters (`müller@example.de`) is sent with SMTPUTF8 when
the server offers it; when it does not, or the address cannot be put in a header at
all, the channel fails with `email_address_unsendable` and the next channel takes over.
Header values (subject, display names) never carry CR/LF. The From name is the merchant's
sender name (SendMessage `sender_name`), the address always SMTP_FROM's. One deadline
covers the whole send (connect, handshake, transfer).
"""

from __future__ import annotations

import asyncio
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

import aiosmtplib

from services.notifier.channels import ChannelFailed, Rendered, TransientFailure
from services.notifier.limits import header_value

#: What a Message-ID's left part may hold (the reference holds an invoice number).
_MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


#: An address as it may go into a header and an SMTP command: one `@`, no whitespace,
#: control characters or header syntax. Non-ASCII is allowed (it needs SMTPUTF8).
_ADDRESS = re.compile(r'[^@\s\x00-\x1f\x7f<>()\[\],;:\\"]+@[^@\s\x00-\x1f\x7f<>()\[\],;:\\"]+')


def _mailbox(name: str, to: str) -> str:
    """The To header: `name <to>`, the name quoted where it must be; raises
    `ChannelFailed("email_address_unsendable")` for an address no header can carry.

    (email.headerregistry.Address refuses a non-ASCII local part outright, so it only
    quotes the display name here, around a placeholder address.)"""
    if not _ADDRESS.fullmatch(to):
        raise ChannelFailed("email_address_unsendable")
    if not name:
        return to
    try:
        quoted = str(Address(display_name=name, username="to", domain="placeholder.invalid"))
    except Exception:  # the header parser's errors vary
        return to
    return f"{quoted[: quoted.rindex('<')]}<{to}>"


def _from(sender: str, name: str | None) -> str:
    """The From header: SMTP_FROM, with the merchant's sender name as its display name
    when it has one (the address stays the platform's: SPF and DKIM are the relay's)."""
    if not name:
        return sender
    address = parseaddr(sender)[1]
    try:
        return str(Address(display_name=header_value(name), addr_spec=address))
    except Exception:  # the header parser's errors vary; the bare address still works
        return sender


class EmailSender:
    def __init__(self, host: str, port: int, sender: str, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout
        # make_msgid would otherwise ask DNS for this host's name on every message.
        self._domain = _MSGID_UNSAFE.sub("-", sender.rpartition("@")[2].strip("<> ")) or (
            "localhost"
        )

    def message(
        self,
        to: str,
        name: str,
        message: Rendered,
        reference: str,
        sender_name: str | None = None,
    ) -> EmailMessage:
        """The e-mail, from `sender_name` (the merchant's) at SMTP_FROM when given;
        `ChannelFailed("email_address_unsendable")` when the address cannot be written
        into a header."""
        email = EmailMessage()
        email["From"] = _from(self.sender, sender_name)
        email["To"] = _mailbox(header_value(name), to)
        email["Subject"] = header_value(message.subject or "")
        email["Message-ID"] = make_msgid(
            idstring=_MSGID_UNSAFE.sub("_", reference)[:100], domain=self._domain
        )
        email.set_content(message.body)
        return email

    async def send(
        self,
        to: str,
        name: str,
        message: Rendered,
        reference: str,
        sender_name: str | None = None,
    ) -> None:
        email = self.message(to, name, message, reference, sender_name)
        try:
            async with asyncio.timeout(self.timeout):
                await aiosmtplib.send(
                    email,
                    recipients=[to],
                    hostname=self.host,
                    port=self.port,
                    timeout=self.timeout,
                )
        except aiosmtplib.SMTPNotSupported:
            # A non-ASCII address and a server without SMTPUTF8.
            raise ChannelFailed("email_address_unsendable") from None
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = ",".join(str(r.code) for r in error.recipients)
            raise ChannelFailed(f"smtp_recipient_refused:{codes}") from None
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500:
                raise ChannelFailed(f"smtp_{error.code}") from None
            raise TransientFailure(f"smtp_{error.code}") from None
        except TimeoutError:
            raise TransientFailure("smtp_timeout") from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise TransientFailure(f"smtp_{type(error).__name__}") from None
