"""The one exception type users see as a one-line message instead of a traceback."""


class UserError(Exception):
    """A mistake in the user's input (file, config field, path, request).

    The message names the file, line or field at fault and, where it helps, what to do.
    The CLI prints it on one line and exits with status 2; nothing else is printed.
    """

    exit_code = 2


def where(path, line: int | None = None) -> str:
    """``path`` or ``path:line`` for the start of an error message."""
    return f"{path}:{line}" if line is not None else str(path)
