"""The one exception type for mistakes a user can fix; the CLI prints its message and exits 2."""


class UserError(Exception):
    """A problem the user caused (missing data, corrupt file, bad flag). The message is one line
    that names the file or flag and says how to fix it."""
