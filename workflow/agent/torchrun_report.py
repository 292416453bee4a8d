"""torchrun's own account of failed workers, read from the end of a run's log.

When a worker fails, torchrun exits 1 and prints a ``ChildFailedError`` report: one
block per failed worker (``rank``, ``exitcode``, and for a worker killed by a signal
``exitcode : -6`` and ``traceback : Signal 6 (SIGABRT) received by PID ...``), the
first one under "Root Cause". The launcher's exit status alone (1) says none of that,
so the sweep runner keeps these facts in the run's ``status.json``
(``worker_failures``) for ``sweep-status`` to show.
"""

import re

_FIELD_RE = re.compile(r"^\s*(rank|exitcode|traceback)\s*:\s*(.*?)\s*$")
_SIGNAL_RE = re.compile(r"Signal (\d+) \((SIG[A-Z0-9]+)\)")
_INT_RE = re.compile(r"-?\d+")


def _block(lines):
    """One worker's block (its field lines) -> dict, or None when it names no rank."""
    doc = {}
    for line in lines:
        m = _FIELD_RE.match(line)
        if not m:
            continue
        key, value = m.groups()
        if key in ("rank", "exitcode"):
            num = _INT_RE.search(value)
            if num:
                doc[key] = int(num.group(0))
        sig = _SIGNAL_RE.search(value)
        if sig:
            doc["signal"], doc["signal_name"] = int(sig.group(1)), sig.group(2)
    if "rank" not in doc:
        return None
    if "signal" not in doc and doc.get("exitcode", 0) < 0:
        doc["signal"] = -doc["exitcode"]
    return doc


def worker_failures(text):
    """The failed workers of torchrun's last report in ``text``: ``[{rank, exitcode,
    signal?, signal_name?, root_cause}]``, the root cause first; [] when there is none."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.strip().endswith(" FAILED") and i and lines[i - 1].startswith("====="):
            start = i
    if start is None:
        return []
    out, current, root = [], None, False
    for line in lines[start + 1:]:
        stripped = line.strip()
        if stripped.startswith("Root Cause"):
            root = True
        if re.match(r"^\[\d+\]:$", stripped) or stripped.startswith("-----") or stripped.startswith("====="):
            if current is not None:
                doc = _block(current[1])
                if doc is not None:
                    doc["root_cause"] = current[0]
                    out.append(doc)
            current = (root, []) if stripped.endswith(":") else None
            if stripped.startswith("=====") and out:
                break
            continue
        if current is not None:
            current[1].append(line)
    out.sort(key=lambda d: not d["root_cause"])
    return out
