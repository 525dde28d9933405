"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad prompt, missing file, bad config
value). The CLI prints its message on one line and exits with code 2, without a traceback.
"""


class UserError(Exception):
    """An error caused by user input; the message names the problem and the fix."""

    exit_code = 2
