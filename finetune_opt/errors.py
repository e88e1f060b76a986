"""The one error type users see for bad input.

Every check on user input (optimizer name, hyperparameter, path, column, config key) raises
`ConfigError` with a one-line message that names the valid choices; the CLI and the recipes turn
it into `error: <message>` on stderr and exit code 2, before anything is written.
"""


class ConfigError(ValueError):
    """Invalid user input: the message is one line and says what would be valid."""


def one_of(kind: str, value, choices) -> ConfigError:
    """`unknown optimizer 'x'; choose one of: a, b, c`."""
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(map(str, choices))}")


def refuse_unused(cfg, unused: dict, reason: str):
    """The first field of `unused` ({field: the value that means "not used"}) that cfg sets otherwise:
    accepted, it would be recorded in results.json yet not done. `{field} {reason}: set {field}=off`."""
    given = next((k for k, off in unused.items() if getattr(cfg, k) != off), None)
    if given:
        off = {None: "null", False: "false", True: "true"}.get(unused[given], unused[given])
        raise ConfigError(f"{given} {reason}: set {given}={off}")


class TrainingStopped(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); its state has been saved."""


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped a run after a complete step and a checkpoint; the message says
    how to go on. Recipes exit with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
