"""Exceptions the library raises for bad input or a failed run; each message names the
file, field or step and the problem."""


class UserError(Exception):
    """Marks an error the user can fix (bad input, a service that is down, a stale copy):
    the CLI prints its message as one line and exits 2 instead of showing a traceback.
    Mixed into errors that do not derive from ValueError."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or does not fit the model."""


class RunFailed(RuntimeError):
    """A run that started well and could not finish for a reason its message states (not
    a bug, not bad input): the CLI prints the message as one line and exits 1."""


class TrainingDiverged(RunFailed, FloatingPointError):
    """A loss term became NaN or infinite. The message names the term, its value and the
    step; no checkpoint of the diverged state is written, the previous ones stay."""
