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
