"""Errors a user can fix, and the exit statuses every bnrepro command ends with.

A UserError's message names the problem and the fix; a command prints it on one line and exits
with EXIT_USER_ERROR. Anything else is a bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad config, data, checkpoint or run folder: the message says what to do
EXIT_DIVERGED = (
    3  # training diverged (non-finite loss or weights) where divergence was not expected
)


class UserError(RuntimeError):
    """A problem in what the user gave (config, data, checkpoint, run folder), not in the code."""
