"""The canonical table's row vocabulary, shared by the sources that write rows and the table that checks them:
its splits, its metadata columns, and a problem record."""

SPLITS = ("train", "valid", "test")
META_COLUMNS = ("path", "patient_id", "split", "label", "source")


def problem(kind, path, detail):
    "One problem found while building a table (missing_file, unreadable, unknown_label, ...)."
    return {"kind": kind, "path": str(path) if path is not None else "", "detail": detail}
