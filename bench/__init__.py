"""Benchmarks of the platform on the embedded (or a given) Kafka broker and PostgreSQL.

Run them with `make bench` (`python -m bench`); see bench/README.md.
"""
