"""Errors of the ``aiida-deeph`` command line."""


class CliError(Exception):
    """An error to print as one line (exit code 1 or ``code``)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
