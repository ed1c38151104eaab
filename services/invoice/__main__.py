"""`python -m services.invoice`: run the invoice service."""

from services.invoice.app import definition
from services.runtime.app import run

if __name__ == "__main__":
    run(definition())
