"""The invoice service."""
