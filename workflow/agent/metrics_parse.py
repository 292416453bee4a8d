"""One log line's metrics (SPEC §11): JSON or dict lines, step-prefixed ``name value``
lists, ``key=value`` pairs, ``sweep.metrics.patterns``. Stdlib only, runs on the pod.

``parse_line`` knows nothing of what came before; the configuration-echo rule and the
running last/min/max live in ``metrics.LogMetrics``.
"""

import ast
import json
import math
import re

#: Names that carry the step in a structured line (the first present wins).
STEP_KEYS = ("step", "global_step", "iter", "iteration", "epoch")

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_KV_RE = re.compile(r"(?:^|[\s,;|(\[])([A-Za-z_][A-Za-z0-9_./-]*)\s*=\s*"
                    r"(" + _NUM + r"|nan|inf|-inf)(?=$|[\s,;|)\]])")
PREFIX_RE = re.compile(r"^\W*(step|iter|iteration|epoch)\s*[:=]?\s*(\d+)(?:\s*/\s*(\d+))?\s*[:|,\-\]]\s*(.*)$",
                       re.IGNORECASE)
_ITEM_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_ ./-]*?)\s*[:=]?\s*(" + _NUM + r"|nan|inf|-inf)\s*([A-Za-z/%]*)$")
_INT_RE = re.compile(r"^[-+]?\d+$")
#: Splits a line into its text and its numbers (a digit inside a name stays text).
SPLIT_RE = re.compile(r"(?<![\w.])(" + _NUM + r")")


def number(raw):
    """A finite float/int, the strings ``nan``/``inf``/``-inf``, or None."""
    if raw in ("nan", "inf", "-inf"):
        return raw
    try:
        return int(raw) if _INT_RE.match(raw) else float(raw)
    except ValueError:
        return None


def _clean(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return None


def _dict_line(s):
    doc = None
    try:
        doc = json.loads(s)
    except ValueError:
        try:
            doc = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None
    if not isinstance(doc, dict):
        return None
    out = {}
    for k, v in doc.items():
        v = _clean(v)
        if v is not None:
            out[str(k)] = v
    return out


def _prefix_line(m):
    """``step 40: train loss 3.06, val loss 3.10`` -> ({"train_loss": 3.06, ...}, 40, total)."""
    out = {}
    for item in re.split(r"[,|;]", m.group(4)):
        im = _ITEM_RE.match(item.strip())
        if not im:
            continue
        value = number(im.group(2))
        if value is None:
            continue
        name = "_".join(im.group(1).replace(":", " ").split())
        out[name] = value
    total = int(m.group(3)) if m.group(3) else None
    return out, int(m.group(2)), total


def parse_metrics_line(line):
    """The metrics of one log line, or None (no echo rule: see ``LogMetrics``)."""
    got = parse_line(line, ())
    return got[0] if got else None


def parse_line(line, patterns):
    """(metrics, step or None, total or None, is_step_line) of one line, or None."""
    s = line.strip()
    if not s or s.startswith("[podflow]"):
        return None
    metrics, step, total, stepline = {}, None, None, False
    if s[0] == "{" and s[-1] == "}":
        metrics = _dict_line(s) or {}
    else:
        m = PREFIX_RE.match(s) if s[0] in "sSiIeE[(" else None
        if m:
            metrics, step, total = _prefix_line(m)
            stepline = bool(metrics)
        elif "=" in s:
            for key, raw in _KV_RE.findall(s):
                value = number(raw)
                if value is not None:
                    metrics[key] = value
    for rx in patterns:
        pm = rx.search(s)
        if pm:
            for key, raw in pm.groupdict().items():
                value = number(raw) if raw is not None else None
                if value is not None:
                    metrics[key] = value
            stepline = True
    if not metrics:
        return None
    if step is None:
        for key in STEP_KEYS:
            if isinstance(metrics.get(key), (int, float)):
                step = metrics[key]
                break
    if not stepline:
        stepline = step is not None or any("loss" in k for k in metrics)
    return metrics, step, total, stepline


def compile_patterns(patterns):
    """``sweep.metrics.patterns`` as compiled regular expressions (ValueError: a bad one)."""
    out = []
    for p in patterns or ():
        try:
            rx = re.compile(p)
        except re.error as exc:
            raise ValueError("sweep.metrics.patterns: %r is not a regular expression: %s" % (p, exc))
        if not rx.groupindex:
            raise ValueError("sweep.metrics.patterns: %r has no named group (?P<name>...)" % p)
        out.append(rx)
    return out
