"""User-facing errors.

A ``UserError`` is a mistake the user can fix (a bad flag, a missing or malformed file). The CLI prints
its message as one line (``error: ...``) and exits with code 2, without a traceback. Library code raises
it with a message that names the file (and line) or the flag, and what is wrong.
"""


class UserError(Exception):
    """A problem with the user's input; printed as a single line by the CLI, exit code 2."""

    exit_code = 2


class OutOfMemory(UserError):
    """The device ran out of memory: a one-line error naming the batch, image size and precision and what to
    change (``fpn.engine.device.out_of_memory``), exit code 4."""

    exit_code = 4


class DataWarning(UserWarning):
    """Something in the user's data was repaired or left out (e.g. bad boxes dropped); the CLI prints it as
    one ``warning: ...`` line."""
