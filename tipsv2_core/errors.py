"""Exceptions the library raises for bad input; each message names the file and the problem."""


class UserError(Exception):
    """Marks an error the user can fix (bad input, a service that is down, a stale copy):
    the CLI prints its message as one line and exits 2 instead of showing a traceback.
    Mixed into errors that do not derive from ValueError."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or does not fit the model."""
