"""The one exception type the command line turns into a readable message and exit code."""


class BusiError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""

    exit_code = 2
