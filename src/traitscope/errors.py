"""One exception type for bad input, so the CLI can print a single clear line, and the checks
that several readers share."""


class TraitscopeError(Exception):
    """Bad user input: the message names the file and the fix, and is shown without a traceback."""


def require_trait(path: object, found: str | None, wanted: str, fix: str) -> None:
    """Refuse a file that holds another trait's results (`found`; None: not recorded in it).
    Read anyway, its numbers would be reported under `wanted`'s name with no error at all."""
    if found is not None and found != wanted:
        raise TraitscopeError(f"{path}: holds trait {found}, not {wanted}; {fix}")
