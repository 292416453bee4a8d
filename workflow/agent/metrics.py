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

Speed (a status may meet gigabytes of new log): one line's parse is in
``metrics_parse``; lines are parsed once per *shape* and whole chunks of a log whose
shapes are known are scanned in C, in pieces of ``SCAN_BYTES``, a regular expression per
shape over the raw bytes (``metrics_shapes``), with each metric's min, max and last (and,
for the report, every point) taken per column.
"""

import json
import operator
import os
import re
import tempfile
import time

from .fsutil import makedirs, read_json
from .metrics_parse import SPLIT_RE, STEP_KEYS, compile_patterns, number, parse_line, parse_metrics_line
from .metrics_shapes import TQDM_LINE, Shapes, last_tqdm, numbers_of_bytes, scan_chunk
from .protocol import AgentError

__all__ = ["CHUNK", "STEP_KEYS", "LogMetrics", "compile_patterns", "parse_metrics_line", "pick_primary", "progress",
           "read_run", "run_summary"]

METRICS_FILE = "metrics.jsonl"
STATE_VERSION = 2
#: Bytes read per chunk; lines are only ever cut at a newline.
CHUNK = 1 << 22
#: Bytes scanned at a time: what one scan makes (a word per number) stays in the CPU's
#: cache (4 MB at once is a third slower).
SCAN_BYTES = 1 << 18
#: Bytes of a piece read line by line to learn its shapes before the rest is scanned.
LEARN_BYTES = 1 << 16
#: Configuration names that announce the number of steps (progress).
TOTAL_KEYS = ("max_steps", "max_iters", "max_iter", "total_steps", "num_train_steps", "num_steps",
              "train_steps", "num_iterations", "max_iterations", "total_iters")
#: Primary metric when ``sweep.metrics.primary`` is unset: the first present.
DEFAULT_PRIMARY = ("val_loss", "eval_loss", "loss")
#: Points kept per series (older points are thinned, the last is always kept).
MAX_POINTS = 4000
_TQDM_RE = re.compile(r"(\d+)/(\d+)\s*\[([\d:]+)<([\d:?]+)")
#: A chunk holding this goes line by line (a new attempt echoes its configuration again).
_NEW_ATTEMPT = b"[podflow] run "


def _secs(clock):
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    total = 0
    for p in parts:
        total = total * 60 + p
    return total



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
        self.shapes = None if patterns else Shapes()

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
        got = self.shapes.parse(line) if self.shapes is not None else parse_line(line, self.patterns)
        if got is None:
            return
        metrics, step, total, stepline = got
        if total:
            self.total = total
        if not self.started and not stepline:
            for key in TOTAL_KEYS:
                if isinstance(metrics.get(key), int):
                    self.total = metrics[key]
            if self.shapes is not None:
                self.shapes.echo(line)
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
                cut = data.rfind(b"\n")
                cut = max(cut, data.rfind(b"\r", cut + 1))  # a tqdm redraw after the last newline
                if (final and self.offset + len(data) >= st.st_size) or (cut < 0 and len(data) == CHUNK):
                    cut = len(data) - 1  # an ended run's last line; a line longer than CHUNK
                elif cut < 0:
                    break  # a partial last line: read when it is complete
                self._feed_chunk(data[:cut + 1])
                self.offset += cut + 1
                if deadline is not None and time.monotonic() > deadline:
                    break
            return self.offset >= st.st_size

    def _feed_chunk(self, raw):
        """Whole lines, in pieces of about ``SCAN_BYTES``."""
        start = 0
        while start < len(raw):
            end = raw.find(b"\n", start + SCAN_BYTES) + 1 or len(raw)
            self._feed_piece(raw[start:end] if start or end < len(raw) else raw)
            start = end

    def _feed_piece(self, raw):
        """Whole lines: scanned in C by the log's known shapes when that takes them all
        (``metrics_shapes.scan_chunk``), else line by line. A piece that cannot be scanned
        yet is tried again after its first ``LEARN_BYTES / 8``, then ``LEARN_BYTES``, went
        line by line (which learns the shapes, and passes the configuration echo)."""
        for learn in (LEARN_BYTES // 8, LEARN_BYTES, None):
            if self.shapes is None or _NEW_ATTEMPT in raw:
                break
            if self.started and self.shapes.hot():
                got = scan_chunk(self.shapes, raw, self.shapes.parse)
                if got is not None and self._take(*got):
                    return
            cut = raw.rfind(b"\n", 0, learn) + 1 if learn else 0
            if len(raw) <= (learn or 0) or cut <= 0:
                break
            self._feed_lines(raw[:cut])
            raw = raw[cut:]
        self._feed_lines(raw)

    def _feed_lines(self, raw):
        """Line by line (grouped by shape where it can), tqdm's progress lines taken out
        first in C (the last one is the progress; a line of tqdm gives nothing else)."""
        if b"<" in raw and self.echo_rule:
            text = b"\n" + raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._set_tqdm(last_tqdm(text))
            raw = TQDM_LINE.sub(b"", text)[1:]
        self._feed_text(raw.decode("utf-8", "replace"))

    def _set_tqdm(self, m):
        if m is not None:
            self.tqdm = [int(m.group(1)), int(m.group(2)), _secs(m.group(3).decode()), _secs(m.group(4).decode())]

    def _feed_text(self, text):
        lines = text.splitlines()
        start = 0
        while start < len(lines) and not self.started:  # the echo phase: line by line
            self._feed_slow(lines[start:start + 1])
            start += 1
        if self.patterns or self.series is not None or "[podflow] run " in text or "it/s]" in text \
                or "s/it]" in text or not self._feed_fast(lines, start):
            self._feed_slow(lines[start:])

    def _feed_slow(self, lines):
        interesting = ("{", "=", "step", "iter", "epoch", "Step", "Iter", "Epoch", "STEP", "ITER", "EPOCH", "|", "it/s]",
                       "s/it]")
        for line in lines:
            if self.patterns or any(t in line for t in interesting):
                self.feed_line(line)

    def _feed_fast(self, lines, start):
        """Lines grouped by shape (learning new shapes, so that later chunks are scanned in
        C), each metric's last/min/max taken per column: what ``feed_line`` would give, at
        a fraction of the cost. False (nothing changed) for a chunk it cannot take (no
        step known for its first lines)."""
        split, shapes, freq = SPLIT_RE.split, self.shapes, self.shapes.freq
        buckets = {}  # shape -> [plan, line numbers, split lines]
        for i in range(start, len(lines)):
            parts = split(lines[i])
            key = "\x00".join(parts[0::2])
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = [shapes.plan(key, lines[i], parts[1::2], count=0), [], []]
            b[1].append(i)
            b[2].append(parts[1::2])
        for key, b in buckets.items():
            freq[key] = freq.get(key, 0) + len(b[1])
        return self._aggregate(buckets.values(), lines)

    def _take(self, text, found, tqdm):
        """What ``scan_chunk`` found in ``text``: each metric's last value and its min and
        max (the earliest line on a tie), with their steps, and the progress, as
        ``feed_line`` would give; False (nothing changed) when the steps of lines without
        one cannot be told (they follow other lines' steps, or the count of several shapes)."""
        stepless = [f for f in found if f.shape.step_at is None]
        if stepless and len(found) > 1 and (self.step is None or len(stepless) < len(found)):
            return False
        names = [name for f in found for name, _ in f.shape.names]
        if self.series is not None and len(set(names)) < len(names):
            return False  # (a series fed by two shapes: its points in the order of their lines)
        for f in stepless:  # a line without a step takes the last step, else its count
            f.step_base = (lambda r, s=self.step: s) if self.step is not None else (lambda r, c=self.count: c + r + 1)
        self._set_tqdm(tqdm)
        if not found:
            return True
        where = {}

        def pos(f, r, last=False):
            """Where row ``r`` of ``f`` is in the chunk (its first or last occurrence)."""
            k = (id(f), r, last)
            if k not in where:
                line = f.rows[r] + b"\n"
                where[k] = text.rfind(line) if last else text.find(line)
            return where[k]

        found = sorted(found, key=lambda f: pos(f, len(f.rows) - 1, True))  # by their last lines
        last, lo, hi = {}, {}, {}
        for f in found:
            for name, j in f.shape.names:
                last[name] = (f, j, len(f.rows) - 1)
                low, r_low, high, r_high = f.stats[j]
                for best, v, r, better in ((lo, low, r_low, operator.lt), (hi, high, r_high, operator.gt)):
                    cur = best.get(name)
                    if cur is None or better(v, cur[0]) or (v == cur[0] and pos(f, r) < pos(cur[1], cur[3])):
                        best[name] = (v, f, j, r)
        self.count += sum(len(f.rows) for f in found)
        for name, (f, j, r) in last.items():
            self.last[name] = f.value(j, r)
            self.steps[name] = f.step(r)
        for name, (v, f, j, r) in lo.items():
            if name not in self.lo or v < self.lo[name][0]:
                self.lo[name] = [f.value(j, r), f.step(r)]
        for name, (v, f, j, r) in hi.items():
            if name not in self.hi or v > self.hi[name][0]:
                self.hi[name] = [f.value(j, r), f.step(r)]
        if self.series is not None:
            self._add_points(sorted(found, key=lambda f: pos(f, 0)))  # new series in the order of their lines
        if found[-1].shape.step_at is not None:
            self.step = found[-1].step(len(found[-1].rows) - 1)
        for f in reversed(found):
            if f.shape.total_at is not None:
                self.total = int(f.raw(f.shape.total_at, len(f.rows) - 1)) or self.total
                break
        return True

    def _add_points(self, found):
        """Every row's (step, value) to its series, thinned as ``feed_line`` thins them (each
        time a series passes MAX_POINTS)."""
        for f in found:
            steps = f.steps()
            for name, j in f.shape.names:
                pts = self.series.setdefault(name, [])
                points = list(map(list, zip(steps, numbers_of_bytes(f.raws[j]))))
                while points:
                    room = MAX_POINTS + 1 - len(pts)
                    pts.extend(points[:room])
                    del points[:room]
                    if len(pts) > MAX_POINTS:
                        del pts[0:-1:2]

    def _aggregate(self, buckets, lines):
        """Each bucket is [plan, positions, rows of number strings] of one shape."""
        # (names [(name, column or None)], positions, number rows or parses, step column, total column)
        shapes = []
        for plan, idx, rows in buckets:
            if plan is None:
                continue
            if plan == "full":
                for i in idx:
                    got = parse_line(lines[i], ())
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
                    best = (idx[j], rows[j][1] if at == "parsed" else number(rows[j][at]))
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
                    cands = [(number(rows[a][k]), idx[a]), (number(rows[b][k]), idx[b])]
                    end = (idx[-1], number(rows[-1][k]))
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

