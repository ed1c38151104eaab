"""`python -m services.notifier`: run the notifier service (not without a valid
CM_SECRET_KEY: it encrypts the webhook secrets)."""

import sys

from services.notifier.app import definition
from services.notifier.secrets import SecretKeyError
from services.notifier.trust import check_settings
from services.runtime.app import run
from services.runtime.settings import Settings

if __name__ == "__main__":
    try:
        check_settings(Settings())
    except SecretKeyError as error:
        sys.exit(f"notifier: refusing to start: {error}")
    run(definition())
