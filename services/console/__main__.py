"""`python -m services.console`: run the merchant console (web UI, API and consumers)."""

from services.console.app import run

if __name__ == "__main__":
    run()
