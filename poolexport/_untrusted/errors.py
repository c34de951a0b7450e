"""The one error type of the untrusted-file checks."""


class UntrustedFileError(ValueError):
    """A file holds something that would run code; the message is one line for the user."""


TRUST_HINT = "pass --trust-pickle only if you trust its source"
