"""Exceptions for problems a user can fix: bad config, bad data, bad checkpoint."""

from data_prep.errors import DataError


class UserError(Exception):
    """A user-fixable problem; entry points print its message as one paragraph and exit 2."""


# What the entry points catch and print without a traceback.
USER_ERRORS = (UserError, DataError)
