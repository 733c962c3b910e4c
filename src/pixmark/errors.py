"""The one exception type for expected failures.

Raise ``PixmarkError`` with a sentence that names the input and, where there is one,
the fix. The CLI prints it on one line and exits with status 2; tracebacks are for
bugs (and ``--debug``).
"""


class PixmarkError(Exception):
    """An expected failure caused by the user's input (file, argument, key, model)."""
