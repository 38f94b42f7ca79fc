"""The ``hubsync`` command line."""
