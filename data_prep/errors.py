"""The exception raised for bad input data (it names the file and row)."""


class DataError(Exception):
    """Bad or missing input data; the message names the file, the row and the fix."""


class BadRow(ValueError):
    """One row that does not fit its schema (the reason only; the caller adds file and row).

    Raised by adapters, and yielded in place of an unparsable row so `on_error: skip` can count it."""
