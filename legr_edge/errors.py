"""The one exception type that reaches a user as a message instead of a traceback."""


class LegrError(Exception):
    """A problem with the user's input (file, key, value) that the user can fix.

    Command-line entry points catch it, log its message as one line and exit with 1.
    """
