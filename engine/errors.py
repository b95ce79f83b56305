"""The two ways a run can fail, and the exit codes the CLI maps them to."""


class HookmixError(Exception):
    """Base class of the errors the CLI turns into one-line messages."""

    exit_code = 1


class BadInput(HookmixError):
    """The user's input is wrong (recipe, CLI argument, data file, checkpoint): exit code 2.

    The message is one line that names the problem and the fix.
    """

    exit_code = 2


class PluginConflict(BadInput):
    """The enabled plugins cannot work together (exclusive hook, conflicts, cycle, missing requirement)."""


class TrainingFailure(HookmixError):
    """Training broke after it started (non-finite loss, ...): exit code 1; names the step and cause."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped the command: exit code 128 + signal number, one line.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that a plugin's ``except Exception``
    does not swallow it.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
