"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A mistake in the user's input (cell id, yaml, hyperparameter, path, data).

    The CLI prints its message as one line on stderr and exits with code 2, before any
    MLflow run is started or after marking a started run FAILED.
    """
