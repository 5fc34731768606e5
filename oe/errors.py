"""The error every user-facing failure becomes: one line, exit status 2."""


class OeError(Exception):
    """A failure the CLI reports as one line on stderr with exit status 2."""
