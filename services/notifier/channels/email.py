"""E-mail over SMTP (aiosmtplib). A 5xx answer or a refused recipient fails the channel."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import aiosmtplib

from services.notifier.channels import ChannelFailed, Rendered, TransientFailure


class EmailSender:
    def __init__(self, host: str, port: int, sender: str, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout

    async def send(self, to: str, name: str, message: Rendered, reference: str) -> None:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = formataddr((name, to)) if name else to
        email["Subject"] = message.subject or ""
        email["Message-ID"] = make_msgid(idstring=reference)
        email.set_content(message.body)
        try:
            await aiosmtplib.send(email, hostname=self.host, port=self.port, timeout=self.timeout)
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = ",".join(str(r.code) for r in error.recipients)
            raise ChannelFailed(f"smtp_recipient_refused:{codes}") from None
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500:
                raise ChannelFailed(f"smtp_{error.code}") from None
            raise TransientFailure(f"smtp_{error.code}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TransientFailure(f"smtp_{type(error).__name__}") from None
