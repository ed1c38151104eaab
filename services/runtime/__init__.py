"""What every service runs on: settings, logging, database, outbox, inbox, consumers, app."""
