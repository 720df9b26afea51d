"""Exceptions the library raises for bad input; each message names the file and the problem."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or does not fit the model."""
