"""`python -m services.collection`: run the collection service."""

from services.collection.app import definition
from services.runtime.app import run

if __name__ == "__main__":
    run(definition())
