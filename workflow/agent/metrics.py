"""Metrics from what a training script writes (SPEC §11); stdlib only, runs on the pod.

Sources, in order of precedence: ``<run dir>/metrics.jsonl`` when the script writes
one, then the run's ``stdout.log``. In the log, a line gives metrics when it is:

* a JSON object, or a Python dict literal (what HF Trainer prints:
  ``{'loss': 0.5, 'epoch': 1.0}``);
* a step prefix followed by ``name value`` items (``step 40: train loss 3.06, val loss
  3.10`` -> ``train_loss``, ``val_loss`` at step 40; ``iter 40: loss 3.05, time 22.2ms``);
* ``key=value`` pairs with numeric values;
* a match of one of ``sweep.metrics.patterns`` (regular expressions whose named groups
  are the metrics; a group named ``step`` is the step).

A configuration echo is not a metric: structured values (``key=value``, dicts) seen
before the first step/loss line of an attempt (``Overriding: learning_rate = 0.003``,
argparse dumps) are dropped; ``max_iters``-like values among them give the run's total
steps, for progress. tqdm lines give progress and ETA.

``LogMetrics`` is incremental: its ``state()`` (a small JSON document: file offset,
last values, min/max of each metric, progress) is kept between calls, so a status
reads only the bytes written since the previous one. ``series=True`` also keeps every
(step, value) point (the local report; the pod never needs them).
"""

import ast
import json
import math
import os
import re
import tempfile
import time

from .fsutil import makedirs, read_json
from .protocol import AgentError

METRICS_FILE = "metrics.jsonl"
STATE_VERSION = 2
#: Bytes read per chunk; lines are only ever cut at a newline.
CHUNK = 1 << 22
#: Names that carry the step in a structured line (the first present wins).
STEP_KEYS = ("step", "global_step", "iter", "iteration", "epoch")
#: Configuration names that announce the number of steps (progress).
TOTAL_KEYS = ("max_steps", "max_iters", "max_iter", "total_steps", "num_train_steps", "num_steps",
              "train_steps", "num_iterations", "max_iterations", "total_iters")
#: Primary metric when ``sweep.metrics.primary`` is unset: the first present.
DEFAULT_PRIMARY = ("val_loss", "eval_loss", "loss")
#: Points kept per series (older points are thinned, the last is always kept).
MAX_POINTS = 4000

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_KV_RE = re.compile(r"(?:^|[\s,;|(\[])([A-Za-z_][A-Za-z0-9_./-]*)\s*=\s*"
                    r"(" + _NUM + r"|nan|inf|-inf)(?=$|[\s,;|)\]])")
_PREFIX_RE = re.compile(r"^\W*(step|iter|iteration|epoch)\s*[:=]?\s*(\d+)(?:\s*/\s*(\d+))?\s*[:|,\-\]]\s*(.*)$",
                        re.IGNORECASE)
_ITEM_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_ ./-]*?)\s*[:=]?\s*(" + _NUM + r"|nan|inf|-inf)\s*([A-Za-z/%]*)$")
_TQDM_RE = re.compile(r"(\d+)/(\d+)\s*\[([\d:]+)<([\d:?]+)")
_INT_RE = re.compile(r"^[-+]?\d+$")
#: Splits a line into its text and its numbers (a digit inside a name stays text).
_SPLIT_RE = re.compile(r"(?<![\w.])(" + _NUM + r")")
SHAPES_MAX = 4096


def _number(raw):
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
        value = _number(im.group(2))
        if value is None:
            continue
        name = "_".join(im.group(1).replace(":", " ").split())
        out[name] = value
    total = int(m.group(3)) if m.group(3) else None
    return out, int(m.group(2)), total


def parse_metrics_line(line):
    """The metrics of one log line, or None (no echo rule: see ``LogMetrics``)."""
    got = _parse(line, ())
    return got[0] if got else None


def _parse(line, patterns):
    """(metrics, step or None, total or None, is_step_line) of one line, or None."""
    s = line.strip()
    if not s or s.startswith("[podflow]"):
        return None
    metrics, step, total, stepline = {}, None, None, False
    if s[0] == "{" and s[-1] == "}":
        metrics = _dict_line(s) or {}
    else:
        m = _PREFIX_RE.match(s) if s[0] in "sSiIeE[(" else None
        if m:
            metrics, step, total = _prefix_line(m)
            stepline = bool(metrics)
        elif "=" in s:
            for key, raw in _KV_RE.findall(s):
                value = _number(raw)
                if value is not None:
                    metrics[key] = value
    for rx in patterns:
        pm = rx.search(s)
        if pm:
            for key, raw in pm.groupdict().items():
                value = _number(raw) if raw is not None else None
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


class _Shapes(object):
    """Parsing by line shape: lines that differ only in their numbers (``iter 10: loss
    3.2``, ``iter 11: loss 3.1``) parse the same way, so the full parse runs once per
    shape and later lines only convert their numbers. A shape whose numbers cannot be
    told apart is parsed in full every time."""

    def __init__(self):
        self.known = {}
        self._hot = self._union = None

    def hot(self, most=8):
        """(plan, compiled regex) of up to ``most`` known shapes whose numbers map to names."""
        if self._hot is None or len(self._hot) < min(most, sum(isinstance(p, tuple) for p in self.known.values())):
            self._hot = [(plan, re.compile(self._regex(key), re.M)) for key, plan in self.known.items()
                         if isinstance(plan, tuple)][:most]
            self._union = None
        return self._hot

    def union(self):
        if self._union is None:
            self._union = re.compile("|".join("(?:%s)" % rx.pattern for _, rx in self._hot) + "|^$", re.M)
        return self._union

    @staticmethod
    def _regex(key):
        texts = key.split("\x00")
        return "^" + ("(?<![\\w.])(" + _NUM + ")").join(re.escape(t) for t in texts) + "$"

    def parse(self, line):
        parts = _SPLIT_RE.split(line)
        key = "\x00".join(parts[0::2])
        nums = parts[1::2]
        plan = self.known.get(key, False)
        if plan is False:
            plan = self._learn(line, nums)
            if len(self.known) >= SHAPES_MAX:
                self.known.clear()
                self._hot = None
            self.known[key] = plan
        if plan is None or plan == "full":
            return None if plan is None else _parse(line, ())
        names, step_at, total_at, stepline = plan
        metrics = {}
        for name, i in names:
            metrics[name] = _number(nums[i])
        step = _number(nums[step_at]) if step_at is not None else None
        if step is None:
            for k in STEP_KEYS:
                if isinstance(metrics.get(k), (int, float)):
                    step = metrics[k]
                    break
        total = int(nums[total_at]) if total_at is not None else None
        return metrics, step, total, stepline

    def _learn(self, line, nums):
        got = _parse(line, ())
        if got is None:
            return None
        metrics, step, total, stepline = got
        values = [_number(n) for n in nums]
        names, at = [], 0
        step_at = total_at = None
        if _PREFIX_RE.match(line.strip()):
            step_at, at = 0, 1
            if total is not None:
                total_at, at = 1, 2
        for name, value in metrics.items():
            while at < len(values) and values[at] != value:
                at += 1
            if at >= len(values):
                return "full"
            names.append((name, at))
            at += 1
        plan = (names, step_at, total_at, stepline)
        return plan if self._check(plan, nums, got) else "full"

    @staticmethod
    def _check(plan, nums, got):
        names, step_at, total_at, _ = plan
        ok = {name: _number(nums[i]) for name, i in names} == got[0]
        ok = ok and (step_at is None or _number(nums[step_at]) == got[1] or got[1] is None)
        return ok and (total_at is None or int(nums[total_at]) == got[2])


def _secs(clock):
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    total = 0
    for p in parts:
        total = total * 60 + p
    return total


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


class LogMetrics(object):
    """Metrics of one file, fed incrementally; ``state()`` resumes it later."""

    def __init__(self, state=None, patterns=(), series=False, echo_rule=True):
        st = state if state and state.get("v") == STATE_VERSION else {}
        self.offset = int(st.get("offset") or 0)
        self.ident = st.get("ident")
        self.started = bool(st.get("started")) or not echo_rule
        self.echo_rule = echo_rule
        self.last = dict(st.get("last") or {})
        self.steps = dict(st.get("steps") or {})  # name -> step of its last value
        self.lo = dict(st.get("lo") or {})  # name -> [value, step]
        self.hi = dict(st.get("hi") or {})
        self.step = st.get("step")
        self.total = st.get("total")
        self.tqdm = st.get("tqdm")  # [n, total, elapsed_secs, eta_secs]
        self.count = int(st.get("count") or 0)  # metric lines seen (the x when no step is known)
        self.patterns = patterns
        self.series = {} if series else None
        self.shapes = None if patterns else _Shapes()

    def state(self):
        return {"v": STATE_VERSION, "offset": self.offset, "ident": self.ident, "started": self.started,
                "last": self.last, "steps": self.steps, "lo": self.lo, "hi": self.hi, "step": self.step,
                "total": self.total, "tqdm": self.tqdm, "count": self.count}

    def feed_line(self, line):
        if "\r" in line:  # tqdm redraws: the last one counts, the others give progress too
            line = line.rsplit("\r", 1)[-1]
        if line.startswith("[podflow] run ") and " started by sweep " in line and self.echo_rule:
            self.started = False  # a new attempt echoes its configuration again
            return
        if "it/s]" in line or "s/it]" in line or "<" in line and "|" in line:
            tm = _TQDM_RE.search(line)
            if tm:
                self.tqdm = [int(tm.group(1)), int(tm.group(2)), _secs(tm.group(3)), _secs(tm.group(4))]
                return
        got = self.shapes.parse(line) if self.shapes is not None else _parse(line, self.patterns)
        if got is None:
            return
        metrics, step, total, stepline = got
        if total:
            self.total = total
        if not self.started and not stepline:
            for key in TOTAL_KEYS:
                if isinstance(metrics.get(key), int):
                    self.total = metrics[key]
            return  # a configuration echo
        self.started = True
        self.count += 1
        if step is None:
            step = self.step if self.step is not None else self.count
        else:
            self.step = step
        for name, value in metrics.items():
            self.last[name] = value
            self.steps[name] = step
            if isinstance(value, str):
                continue
            lo, hi = self.lo.get(name), self.hi.get(name)
            if lo is None or value < lo[0]:
                self.lo[name] = [value, step]
            if hi is None or value > hi[0]:
                self.hi[name] = [value, step]
            if self.series is not None:
                pts = self.series.setdefault(name, [])
                pts.append([step, value])
                if len(pts) > MAX_POINTS:
                    del pts[0:-1:2]

    def feed_file(self, path, budget_bytes=None, final=False, deadline=None):
        """Read ``path`` from the saved offset (from 0 when it was replaced or shrank), at
        most ``budget_bytes``; a line is read once it ends (``\\n``, or tqdm's ``\\r``;
        with ``final``, the end of the file ends the last line).
        Returns True when it reached the end of the file."""
        try:
            fh = open(path, "rb")
        except (IOError, OSError):
            return True
        with fh:
            st = os.fstat(fh.fileno())
            ident = "%d:%d" % (st.st_dev, st.st_ino)
            if ident != self.ident or st.st_size < self.offset:
                self.__init__(None, self.patterns, self.series is not None, self.echo_rule)
                self.ident = ident
            end_at = st.st_size if budget_bytes is None else min(st.st_size, self.offset + budget_bytes)
            while self.offset < end_at:
                fh.seek(self.offset)
                data = fh.read(min(CHUNK, end_at - self.offset))
                if not data:
                    break
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                if (final and self.offset + len(data) >= st.st_size) or (cut < 0 and len(data) == CHUNK):
                    cut = len(data) - 1  # an ended run's last line; a line longer than CHUNK
                elif cut < 0:
                    break  # a partial last line: read when it is complete
                self._feed_text(data[:cut + 1].decode("utf-8", "replace"))
                self.offset += cut + 1
                if deadline is not None and time.monotonic() > deadline:
                    break
            return self.offset >= st.st_size

    def _feed_text(self, text):
        lines = text.splitlines()
        start = 0
        while start < len(lines) and not self.started:  # the echo phase: line by line
            self._feed_slow(lines[start:start + 1])
            start += 1
        if self.patterns or self.series is not None or "[podflow] run " in text or "it/s]" in text \
                or "s/it]" in text:
            self._feed_slow(lines[start:])
        elif not (start == 0 and self._feed_hot(text)) and not self._feed_fast(lines, start):
            self._feed_slow(lines[start:])

    def _feed_slow(self, lines):
        interesting = ("{", "=", "step", "iter", "epoch", "Step", "Iter", "Epoch", "|")
        for line in lines:
            if self.patterns or any(t in line for t in interesting):
                self.feed_line(line)

    def _feed_fast(self, lines, start):
        """Lines grouped by shape, each metric's last/min/max taken per column: what
        ``feed_line`` would give, at a fraction of the cost. False (nothing changed) for
        a chunk it cannot take (no step known for its first lines)."""
        split, learn, known = _SPLIT_RE.split, self.shapes._learn, self.shapes.known
        buckets = {}  # shape -> [plan, line numbers, split lines]
        for i in range(start, len(lines)):
            parts = split(lines[i])
            if len(parts) == 1:
                continue
            key = "\x00".join(parts[0::2])
            b = buckets.get(key)
            if b is None:
                plan = known.get(key, False)
                if plan is False:
                    plan = known[key] = learn(lines[i], parts[1::2])
                b = buckets[key] = [plan, [], []]
            b[1].append(i)
            b[2].append(parts[1::2])
        return self._aggregate(buckets.values(), lines)

    def _feed_hot(self, text):
        """The chunk's lines of known shapes found by one regular expression per shape
        (in C), when every other line of it holds no metric; False: not taken."""
        hot = self.shapes.hot()
        if not hot:
            return False
        buckets = []
        for plan, rx in hot:
            found = [(m.start(), m.groups()) for m in rx.finditer(text)]
            if found:
                buckets.append([plan, [f[0] for f in found], [f[1] for f in found]])
        for line in self.shapes.union().sub("", text).splitlines():
            if line and self.shapes.parse(line) is not None:
                return False  # a line of another shape: the line-by-line path learns it
        return bool(buckets) and self._aggregate(buckets, None)

    def _aggregate(self, buckets, lines):
        """Each bucket is [plan, positions, rows of number strings] of one shape."""
        # (names [(name, column or None)], positions, number rows or parses, step column, total column)
        shapes = []
        for plan, idx, rows in buckets:
            if plan is None:
                continue
            if plan == "full":
                for i in idx:
                    got = _parse(lines[i], ())
                    if got is not None:
                        shapes.append(([(n, None) for n in got[0]], [i], [got], "parsed", None))
                continue
            names, at, total_at, _ = plan
            if at is None:
                at = next((j for k in STEP_KEYS for n, j in names if n == k), None)
            shapes.append((names, idx, rows, at, total_at))
        if not shapes:
            return True
        import bisect

        stepped = [(idx, rows, at) for _, idx, rows, at, _ in shapes
                   if at is not None and (at != "parsed" or rows[0][1] is not None)]

        def step_of(i):
            """The step of line ``i``: its own, else the last one before it."""
            best = None
            for idx, rows, at in stepped:
                j = bisect.bisect_right(idx, i) - 1
                if j >= 0 and (best is None or idx[j] > best[0]):
                    best = (idx[j], rows[j][1] if at == "parsed" else _number(rows[j][at]))
            return best[1] if best else self.step

        first = min(idx[0] for _, idx, _, _, _ in shapes)
        if self.step is None and (not stepped or min(idx[0] for idx, _, _ in stepped) > first):
            return False
        last, lo, hi = {}, {}, {}
        for names, idx, rows, at, total_at in shapes:
            if at == "parsed":
                if rows[0][2]:
                    self.total = rows[0][2]
            elif total_at is not None:
                self.total = int(rows[-1][total_at])
            for name, j in names:
                if j is None:
                    value = rows[0][0][name]
                    cands = [] if isinstance(value, str) else [(value, idx[0])]
                    end = (idx[0], value)
                else:
                    k = j
                    col = [float(p[k]) for p in rows]
                    a, b = col.index(min(col)), col.index(max(col))
                    cands = [(_number(rows[a][k]), idx[a]), (_number(rows[b][k]), idx[b])]
                    end = (idx[-1], _number(rows[-1][k]))
                if name not in last or end[0] > last[name][0]:
                    last[name] = end
                for value, i in cands:
                    if name not in lo or (value, i) < lo[name]:
                        lo[name] = (value, i)
                    if name not in hi or (value, -i) > (hi[name][0], -hi[name][1]):
                        hi[name] = (value, i)
        self.count += sum(len(idx) for _, idx, _, _, _ in shapes)
        for name, (i, value) in last.items():
            self.last[name] = value
            self.steps[name] = step_of(i)
        for name, (value, i) in lo.items():
            if name not in self.lo or value < self.lo[name][0]:
                self.lo[name] = [value, step_of(i)]
        for name, (value, i) in hi.items():
            if name not in self.hi or value > self.hi[name][0]:
                self.hi[name] = [value, step_of(i)]
        if stepped:
            self.step = step_of(max(idx[-1] for idx, _, _ in stepped))
        return True

    def best(self, primary=None, mode="min"):
        """``{"name", "value", "step"}`` of the primary metric, or None."""
        name = pick_primary(self.last, primary)
        if name is None:
            return None
        point = (self.hi if mode == "max" else self.lo).get(name)
        if point is None:
            return None
        return {"name": name, "value": point[0], "step": point[1]}


def pick_primary(names, primary=None):
    if primary:
        return primary if primary in names else None
    for name in DEFAULT_PRIMARY:
        if name in names:
            return name
    return None


def run_metrics(log, jsonl):
    """Merge the log's and ``metrics.jsonl``'s parsers: the file's names win."""
    if jsonl is None or not jsonl.last:
        return log
    merged = LogMetrics(log.state(), log.patterns, log.series is not None)
    for attr in ("last", "steps", "lo", "hi"):
        getattr(merged, attr).update(getattr(jsonl, attr))
    if merged.series is not None:
        merged.series = dict(log.series or {})
        merged.series.update(jsonl.series or {})
    if jsonl.step is not None:
        merged.step = jsonl.step
    return merged


def progress(m, elapsed_secs=None):
    """``{"step", "total", "fraction", "eta_secs"}`` when the run's progress is known, else None."""
    if m.tqdm and m.tqdm[1]:
        n, total, _, eta = m.tqdm
        return {"step": n, "total": total, "fraction": min(1.0, float(n) / total), "eta_secs": eta}
    if m.total and isinstance(m.step, (int, float)):
        frac = min(1.0, max(0.0, float(m.step) / m.total))
        eta = None
        if elapsed_secs and 0 < frac < 1:
            eta = round(elapsed_secs * (1 - frac) / frac, 1)
        return {"step": m.step, "total": m.total, "fraction": frac, "eta_secs": eta}
    return None


def read_run(d, state=None, patterns=(), series=False, budget_bytes=None, final=False, deadline=None,
             log_name="stdout.log"):
    """(merged LogMetrics, new state) of run dir ``d``, resuming from ``state``;
    ``final``: the run has ended (its last line needs no newline)."""
    state = state or {}
    log = LogMetrics(state.get("log"), patterns, series)
    done = log.feed_file(os.path.join(d, log_name), budget_bytes, final, deadline)
    jsonl = None
    path = os.path.join(d, METRICS_FILE)
    if os.path.exists(path):
        jsonl = LogMetrics(state.get("jsonl"), (), series, echo_rule=False)
        done = jsonl.feed_file(path, budget_bytes, final, deadline) and done
    new = {"log": log.state(), "jsonl": jsonl.state() if jsonl else None, "complete": done}
    return run_metrics(log, jsonl), new


def _save_cache(path, doc):
    """Temp file + rename, without fsync: a cache lost in a crash is only parsed again."""
    try:
        makedirs(os.path.dirname(path))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".metrics.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass  # a full disk: the next status parses again


def run_summary(d, state_path, patterns=(), primary=None, mode="min", final=False, elapsed_secs=None,
                budget_bytes=None, deadline=None):
    """``{"metrics", "best", "progress", "metrics_complete"}`` of run dir ``d``; the
    parser's state is kept in ``state_path`` (rewritten only when it moved)."""
    try:
        saved = read_json(state_path, default=None, what="metrics state") or {}
    except AgentError:
        saved = {}
    m, new = read_run(d, saved, patterns, budget_bytes=budget_bytes, final=final, deadline=deadline)
    if new != {k: saved.get(k) for k in new}:
        _save_cache(state_path, new)
    return {"metrics": dict(m.last), "best": m.best(primary, mode), "progress": progress(m, elapsed_secs),
            "metrics_complete": new["complete"]}
