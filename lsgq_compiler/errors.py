"""User-facing errors: one line on what was wrong, one on what to do."""
from __future__ import annotations


def user_error(what: str, todo: str, cls: type[Exception] = ValueError) -> Exception:
    """Build an exception whose message reads ``what`` then ``todo`` on the next line."""
    return cls(f"{what}\n  -> {todo}")


class CaptureError(RuntimeError):
    """torch.export could not capture the model; the message says which construct and what to try."""
