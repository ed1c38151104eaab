"""Letters: rendered to PDF with fpdf2, then written to LETTER_SPOOL_DIR or POSTed to
PRINT_PROVIDER_URL (`application/pdf`, non-2xx fails the channel).

Spool paths are built from sanitised or hashed parts only (`spool_path`) and checked to
lie inside the spool directory: no website key or invoice number can place a file
anywhere else. The print provider gets one deadline per request and at most
`max_response_bytes` of its answer are read.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import httpx

from services.notifier.channels import ChannelFailed, Provider, Rendered, TransientFailure
from services.notifier.limits import header_value

#: The PDF core fonts cover Windows-1252 (with €); other characters become `?`.
_ENCODING = "windows-1252"


def _printable(text: str) -> str:
    return text.encode(_ENCODING, "replace").decode(_ENCODING)


def render_pdf(
    address_lines: list[str],
    date_line: str,
    message: Rendered,
    sender_name: str | None = None,
    *,
    compress: bool = True,
) -> bytes:
    """One A4 letter: the sender (the merchant's sender name) in bold at the top, the
    address window, the date, the subject in bold, the text."""
    # Imported at the first letter, not at start: fpdf2 with fontTools and Pillow is
    # ~30 MB of the notifier's memory, which a notifier sending no letters never needs
    # (bench/README.md, "Memory of the notifier").
    from fpdf import FPDF  # noqa: PLC0415

    pdf = FPDF(format="A4")
    pdf.set_compression(compress)
    pdf.core_fonts_encoding = _ENCODING
    pdf.set_margins(25, 25, 25)
    pdf.add_page()
    if sender_name:
        pdf.set_font("Helvetica", style="B", size=11)
        pdf.multi_cell(0, 5, _printable(header_value(sender_name)))
    pdf.set_font("Helvetica", size=11)
    pdf.set_y(50)
    pdf.multi_cell(0, 5, _printable("\n".join(address_lines)))
    pdf.ln(10)
    pdf.multi_cell(0, 5, _printable(date_line))
    pdf.ln(5)
    if message.subject:
        pdf.set_font("Helvetica", style="B", size=11)
        pdf.multi_cell(0, 5, _printable(message.subject))
        pdf.ln(5)
        pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 5, _printable(message.body))
    return bytes(pdf.output())


#: A website key used as a directory name as it is: starts with a letter or digit (so
#: never `.`, `..` or hidden), then letters, digits, `.`, `_`, `-`.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def merchant_directory(website_key: str) -> str:
    """The spool folder of a merchant: the website key when it is a plain name, else
    `_` + its sanitised form without dots at the ends + `-` + a hash of the key (a plain
    key never starts with `_`, so the two kinds cannot collide; `..` becomes `_-<hash>`)."""
    if _PLAIN_KEY.fullmatch(website_key):
        return website_key
    return f"_{_UNSAFE.sub('_', website_key).strip('.')[:40]}-{_digest(website_key)}"


def letter_file_name(reference: str) -> str:
    """`{reference}.pdf` with anything but letters, digits, `.`, `_`, `-` replaced, no
    leading dot, and a hash instead of the tail when it is long."""
    safe = _UNSAFE.sub("_", reference).lstrip(".") or "letter"
    if len(safe) > 120:
        safe = f"{safe[:100]}-{_digest(reference)}"
    return f"{safe}.pdf"


def spool_path(spool_dir: Path, website_key: str, reference: str) -> Path:
    """Where a merchant's letter goes; `ChannelFailed("letter_path_refused")` should the
    result ever lie outside the spool directory."""
    root = spool_dir.resolve()
    path = (root / merchant_directory(website_key) / letter_file_name(reference)).resolve()
    if path == root or not path.is_relative_to(root):
        raise ChannelFailed("letter_path_refused")
    return path


class LetterSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        spool_dir: str | None,
        print_url: str | None,
        *,
        timeout_s: float = 30.0,
        max_response_bytes: int = 65_536,
    ) -> None:
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.printer = (
            Provider(client, print_url, "print", timeout_s, max_response_bytes)
            if print_url is not None
            else None
        )

    @property
    def available(self) -> bool:
        return self.spool_dir is not None or self.printer is not None

    async def send(
        self,
        address_lines: list[str],
        date_line: str,
        message: Rendered,
        website_key: str,
        reference: str,
        sender_name: str | None = None,
    ) -> str:
        """Hand the letter over; returns where it went (a file name or the provider)."""
        pdf = await asyncio.to_thread(render_pdf, address_lines, date_line, message, sender_name)
        if self.printer is not None:
            headers = {"content-type": "application/pdf", "x-reference": header_value(reference)}
            await self.printer.post(content=pdf, headers=headers)
            return "print_provider"
        assert self.spool_dir is not None
        path = spool_path(self.spool_dir, website_key, reference)
        try:
            await asyncio.to_thread(_write, path, pdf)
        except OSError as error:
            raise TransientFailure(f"spool_{type(error).__name__}") from None
        return path.name


def _write(path: Path, data: bytes) -> None:
    # Write then rename: a print robot watching the folder never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(path)
