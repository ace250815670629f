"""The package's user-facing error: one line that names the thing at fault (topic, field, file, parameter).

Front doors (``rgbt-seg``, the node) print ``str(error)`` as a single line instead of a traceback.
"""


class RgbtSegError(Exception):
    """Bad input or configuration, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception text (or its type's name when it has none), to quote in one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
