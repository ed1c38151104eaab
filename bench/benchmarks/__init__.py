"""One module per benchmark; each registers itself with `bench.registry.benchmark`.

Every module in this package is imported by `python -m bench`, so a new benchmark is a
new module here.
"""
