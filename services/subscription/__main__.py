"""`python -m services.subscription`: run the subscription service."""

from services.runtime.app import run
from services.subscription.app import definition

if __name__ == "__main__":
    run(definition())
