"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """A problem with what the user gave us (a file, a field, a flag, a pair of models).

    The message names the input and what was expected; the CLI prints it on one line.
    """


def require(ok: bool, where: str, expected: str, got) -> None:
    """Raise ``UserError("<where>: expected <expected>, got <got>")`` unless ``ok`` (config validation)."""
    if not ok:
        raise UserError(f"{where}: expected {expected}, got {got!r}")
