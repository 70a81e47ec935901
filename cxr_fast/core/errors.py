"""Exceptions that reach the user as one line, not a traceback."""


class CxrError(Exception):
    """A user error: bad input, missing data or weights. The CLI prints its message and exits 2."""


class DataError(CxrError):
    """A dataset, table or image that cannot be used as given."""


class WeightsError(CxrError):
    """Pretrained weights that were asked for but cannot be had."""


class ModelFormatError(CxrError):
    """A model directory that this version of cxr_fast cannot load."""
