"""The exception raised for bad input data (it names the file and row)."""


class DataError(Exception):
    """Bad or missing input data; the message names the file, the row and the fix."""
