"""Letters: rendered to PDF with fpdf2, then written to LETTER_SPOOL_DIR or POSTed to
PRINT_PROVIDER_URL (`application/pdf`, non-2xx fails the channel)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from fpdf import FPDF

from services.notifier.channels import ChannelFailed, Rendered, TransientFailure

#: The PDF core fonts cover Windows-1252 (with €); other characters become `?`.
_ENCODING = "windows-1252"


def _printable(text: str) -> str:
    return text.encode(_ENCODING, "replace").decode(_ENCODING)


def render_pdf(address_lines: list[str], date_line: str, message: Rendered) -> bytes:
    """One A4 letter: the address window, the date, the subject in bold, the text."""
    pdf = FPDF(format="A4")
    pdf.core_fonts_encoding = _ENCODING
    pdf.set_margins(25, 25, 25)
    pdf.add_page()
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class LetterSender:
    def __init__(
        self, client: httpx.AsyncClient, spool_dir: str | None, print_url: str | None
    ) -> None:
        self.client = client
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.print_url = print_url

    @property
    def available(self) -> bool:
        return self.spool_dir is not None or self.print_url is not None

    async def send(
        self,
        address_lines: list[str],
        date_line: str,
        message: Rendered,
        website_key: str,
        reference: str,
    ) -> str:
        """Hand the letter over; returns where it went (a file name or the provider)."""
        pdf = await asyncio.to_thread(render_pdf, address_lines, date_line, message)
        if self.print_url is not None:
            try:
                response = await self.client.post(
                    self.print_url,
                    content=pdf,
                    headers={"content-type": "application/pdf", "x-reference": reference},
                )
            except httpx.HTTPError as error:
                raise TransientFailure(f"print_{type(error).__name__}") from None
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientFailure(f"print_http_{response.status_code}")
            if not response.is_success:
                raise ChannelFailed(f"print_http_{response.status_code}")
            return "print_provider"
        assert self.spool_dir is not None
        directory = self.spool_dir / _safe(website_key)
        path = directory / f"{_safe(reference)}.pdf"
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
