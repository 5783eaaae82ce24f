"""The one exception type for problems a user causes and can fix."""


class UserError(Exception):
    """A user-caused problem (bad path, bad option, missing checkpoint, ...).

    The message is one line that names the fix. Command-line scripts catch it, print `error: <message>` to
    stderr and exit with status 2, so users never see a traceback for their own mistakes.
    """

    def __init__(self, message: str):
        # Library messages folded into ours (torch's state-dict key lists, say) span lines: keep it one line.
        super().__init__(" ".join(str(message).split()))
