"""`python -m services.notifier`: run the notifier service."""

from services.notifier.app import definition
from services.runtime.app import run

if __name__ == "__main__":
    run(definition())
