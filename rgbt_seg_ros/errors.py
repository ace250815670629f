"""The package's user-facing error: one line that names the thing at fault (topic, field, file, parameter).

Front doors (``rgbt-seg``, the node) print ``str(error)`` as a single line instead of a traceback.
"""


class RgbtSegError(Exception):
    """Bad input or configuration, explained in one line."""
