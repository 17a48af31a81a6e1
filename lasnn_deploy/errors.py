"""The one exception type that the CLI turns into a single line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and, where there is one, the fix."""
