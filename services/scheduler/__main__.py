"""`python -m services.scheduler`: run the scheduler service."""

from services.scheduler.app import definition
from services.runtime.app import run

if __name__ == "__main__":
    run(definition())
