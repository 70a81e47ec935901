"""Settings that hold within a `with` block (contextvars): the one way cxr_fast scopes a default, e.g.
precision.default_precision and tracking.tracking_context."""
from contextlib import contextmanager


@contextmanager
def scoped(var, value):
    "Set the ContextVar `var` to `value` inside the block (yielding it), and back to what it was after."
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)
