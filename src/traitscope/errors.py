"""One exception type for bad input, so the CLI can print a single clear line."""


class TraitscopeError(Exception):
    """Bad user input: the message names the file and the fix, and is shown without a traceback."""
