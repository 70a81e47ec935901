"""The model card as the `serve` page shows it: escaped HTML from model.json (architecture, task, decision rule,
training data, internal metrics of the held-out splits, external metrics of `evaluate` runs, intended use and
known limitations from card.py) and the model directory's MODEL_CARD.md when there is one.

Everything taken from model.json or MODEL_CARD.md is HTML-escaped: a model directory is data, not markup.
"""
import html
import json
import re
from pathlib import Path

from ...evaluation.card import DISCLAIMER
from ...evaluation.card import card_facts as computed_card_facts
from ...evaluation.markdown import fmt


def _table(header, rows):
    "An escaped HTML table (no header row when `header` is None)."
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='card-table'>{head}<tbody>{body}</tbody></table>"


def _scalar_metrics(split):
    "The headline (number-valued) metrics of one split's dict, with their 95% CI where recorded."
    ci = split.get("ci") or {}
    out = {}
    for key, value in split.items():
        if key in ("n", "ci") or isinstance(value, bool) or not isinstance(value, (int, float)): continue
        text = fmt(value)
        if isinstance(ci.get(key), (list, tuple)) and len(ci[key]) == 2 and None not in ci[key]:
            text += f" ({fmt(ci[key][0])}-{fmt(ci[key][1])})"
        out[key.replace("_", " ")] = text
    return out


def _metrics_table(named_splits):
    "One row per (name, split dict): images and every headline metric."
    named_splits = [(n, s) for n, s in named_splits if isinstance(s, dict)]
    if not named_splits: return ""
    cols = []
    for _, s in named_splits:
        cols += [k for k in _scalar_metrics(s) if k not in cols]
    rows = [[name, s.get("n", "")] + [_scalar_metrics(s).get(c, "") for c in cols] for name, s in named_splits]
    return _table(["data", "images", *cols], rows)


def external_metrics(meta, model_dir):
    """(name, split metrics) of evaluations on other data: model.json's `evaluations` (what `evaluate` records),
    then any RUN_DIR/eval-*/metrics.json that no recorded evaluation points to."""
    found, reports = [], set()
    for e in meta.get("evaluations") or []:
        if not isinstance(e, dict): continue
        metrics = {k: v for k, v in (e.get("metrics") or {}).items() if isinstance(v, dict)}
        split = {"n": e.get("n", ""), **{k: v.get("value") for k, v in metrics.items()},
                 "ci": {k: v.get("ci") for k, v in metrics.items()}}
        if e.get("ece") is not None: split["ece"] = e["ece"]
        found.append((str(e.get("source_name") or e.get("source") or "?"), split))
        if e.get("report"): reports.add(Path(e["report"]).parent.name)
    for path in sorted(Path(model_dir).parent.glob("eval-*/metrics.json")):
        if path.parent.name in reports: continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result.get("test"), dict): found.append((path.parent.name[len("eval-"):], result["test"]))
    return found


def card_facts(meta):
    "model.json's `card` facts (intended use, limitations), or the same computed from model.json; {} if neither."
    if isinstance(meta.get("card"), dict): return meta["card"]
    try:
        return computed_card_facts(meta)
    except Exception:  # a model.json the card module cannot read: show the rest of the card
        return {}


def _data_summary(data):
    "Training data: source, task, split method and the counts per split."
    if not isinstance(data, dict) or not data: return "<p>No training data summary in model.json.</p>"
    parts = []
    facts = [(k.replace("_", " "), data[k]) for k in ("source", "task", "split_method") if data.get(k)]
    if facts: parts.append("<ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in facts) + "</ul>")
    counts = data.get("counts")
    if isinstance(counts, dict) and counts:
        keys = []
        for split in counts.values():
            if isinstance(split, dict): keys += [k for k in split if k not in keys]
        parts.append(_table(["split", *keys], [[s, *[c.get(k, "") for k in keys]] for s, c in counts.items()
                                               if isinstance(c, dict)]))
    return "".join(parts)


SAFE_SCHEMES = ("http", "https", "mailto", "")  # "": a relative link
URL_ATTRIBUTE = re.compile(r'\s(href|src)="([^"]*)"')


def safe_url(url):
    "True for an http(s), mailto or relative URL (entities decoded, blanks and control characters ignored, as browsers do)."
    plain = "".join(ch for ch in html.unescape(url) if ch.isprintable() and not ch.isspace())
    scheme = plain.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", plain) else ""
    return scheme in SAFE_SCHEMES


def safe_links(rendered):
    "Rendered HTML with every href/src that is not http(s), mailto or relative removed (javascript:, data:, ...)."
    return URL_ATTRIBUTE.sub(lambda m: m.group(0) if safe_url(m.group(2)) else "", rendered)


def _markdown_html(text):
    "MODEL_CARD.md as HTML (its own HTML escaped, only safe links kept), or preformatted text without markdown."
    try:
        import markdown  # optional (the `serve` extra)
    except ImportError:
        return f"<pre class='model-card-md'>{html.escape(text)}</pre>"
    rendered = markdown.markdown(html.escape(text, quote=False), extensions=["tables"])
    return "<div class='model-card-md'>" + safe_links(rendered) + "</div>"


def model_card_html(name, meta, model_dir):
    "The model card as escaped HTML: what model.json holds, external evaluations, and MODEL_CARD.md if present."
    head = meta.get("head") or {}
    thresholds = meta.get("thresholds") or {}
    facts = [
        ("architecture", f"{meta.get('arch')} (head: hidden {head.get('hidden') or 'default'}, dropout {head.get('dropout')})"),
        ("task", f"{meta.get('task')} ({'multi-label' if meta.get('multilabel') else 'single-label'})"),
        ("classes", ", ".join(str(c) for c in meta.get("classes", []))),
        ("image size", f"{meta.get('img_size')} px, resize {meta.get('resize_method', 'squish')}, "
                       f"preprocessing {meta.get('preprocessing', 'none')}"),
        ("loss", meta.get("loss", "?")),
        ("decision", ", ".join(f"{k} >= {fmt(v, 2)}" for k, v in thresholds.items()) if thresholds else "highest probability"),
        ("written by", f"cxr_fast {meta.get('cxr_fast_version', '?')} (model format {meta.get('format_version')})"),
    ]
    internal = [(s, (meta.get("metrics") or {}).get(s)) for s in ("valid", "test")]
    external = external_metrics(meta, model_dir)
    notes = [f"{name}: {n}" for name, s in internal if isinstance(s, dict) for n in s.get("notes", [])]
    extra = card_facts(meta)
    parts = [f"<h3>Model card: {html.escape(name)}</h3>",
             f"<p class='disclaimer'>{html.escape(DISCLAIMER)}</p>"]
    if extra.get("intended_use"): parts.append(f"<p><b>Intended use.</b> {html.escape(str(extra['intended_use']))}</p>")
    parts += [_table(None, facts),
             "<h4>Training data</h4>", _data_summary(meta.get("data")),
             "<h4>Internal metrics (held-out splits of the training data)</h4>",
             _metrics_table(internal) or "<p>None recorded in model.json.</p>",
             "<h4>External metrics (other datasets)</h4>",
             _metrics_table(external) or "<p>None recorded for this model (run <code>cxr_fast evaluate</code> "
                                         "on another labelled dataset to add them).</p>"]
    if notes: parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    audit = extra.get("shortcut_audit")
    if isinstance(audit, dict) and audit.get("verdict"):
        parts += ["<h4>Shortcut audit</h4>", f"<p class='shortcut-audit {html.escape(str(audit.get('level')))}'>"
                  f"<b>{html.escape(str(audit.get('level')))}</b>: {html.escape(str(audit['verdict']))}</p>"]
    if extra.get("limitations"):
        parts += ["<h4>Known limitations</h4>", "<ul class='limitations'>" +
                  "".join(f"<li>{html.escape(str(n))}</li>" for n in extra["limitations"]) + "</ul>"]
    card = Path(model_dir) / "MODEL_CARD.md"
    if card.is_file():
        try:
            parts.append("<details class='model-card-file'><summary>MODEL_CARD.md (the model directory's card, in full)"
                         "</summary>" + _markdown_html(card.read_text(errors="replace")) + "</details>")
        except OSError:
            pass
    return "\n".join(parts)
