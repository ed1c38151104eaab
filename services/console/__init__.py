"""The merchant console: read models of the event topics, a web UI and a JSON API."""
