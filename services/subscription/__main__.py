"""`python -m services.subscription`: run the subscription service."""

from services.subscription.app import definition
from services.runtime.app import run

if __name__ == "__main__":
    run(definition())
