"""The command line's own error type: a user error reported in one line."""

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user error the command line reports in one line."""
