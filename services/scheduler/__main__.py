"""`python -m services.scheduler`: run the scheduler service."""

from services.runtime.app import run
from services.scheduler.app import definition

if __name__ == "__main__":
    run(definition())
