"""The one markdown table renderer and metric cell format, for report.md, MODEL_CARD.md, the calibration section,
`compare` and the audit."""
import numpy as np


def fmt(v, digits=3):
    "A metric for a table: 3 decimals, n/a when undefined."
    if v is None or (isinstance(v, float) and not np.isfinite(v)): return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def md_table(header, rows):
    """A markdown table (cells already strings, '|' escaped). Not pandas' to_markdown: that needs the optional
    `tabulate` package and does not escape '|' in cells."""
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
