"""Parsing by line shape, and whole chunks of a log scanned in C by the shapes already known.

Lines that differ only in their numbers (``iter 10: loss 3.2``, ``iter 11: loss 3.1``)
parse the same way: the full parse (``metrics_parse.parse_line``) runs once per shape,
and its *plan* (which number is which metric, which is the step) serves every later
line. A shape whose numbers cannot be told apart (plan ``"full"``) is parsed in full
every time; a shape without metrics has plan None.

``scan_chunk`` is what makes a big log cheap: each of the most frequent known shapes
becomes one regular expression over the raw bytes of a whole chunk, whose ``findall``
gives that shape's numbers as columns, with no Python per line. It answers only when
every line of the chunk is of a known shape (counted) or holds no metric.
"""

import re
from operator import itemgetter

from .metrics_parse import PREFIX_RE, SPLIT_RE, STEP_KEYS, number, parse_line

SHAPES_MAX = 4096
#: Shapes scanned per chunk (each is one pass of a regular expression over it).
HOT_MAX = 12
#: A number in a shape's regular expression: a run of the characters numbers are made
#: of (every captured run must then convert with ``float``, or the chunk goes line by line).
_RUN = b"([-+0-9.eE]+)"
_RUN_CHARS = "-+0123456789.eE"


class Shapes(object):
    """The known shapes of one log: ``key`` (its text, numbers cut out) -> plan."""

    def __init__(self):
        self.known = {}
        self.freq = {}  # key -> lines seen: the most frequent are scanned
        self._hot = None

    @staticmethod
    def split(line):
        """(key, numbers) of a line."""
        parts = SPLIT_RE.split(line)
        return "\x00".join(parts[0::2]), parts[1::2]

    def plan(self, key, line, nums, count=1):
        """The plan of shape ``key`` (learnt from ``line`` when new); counts ``count`` lines."""
        plan = self.known.get(key, False)
        if plan is False:
            plan = self.learn(line, nums)
            if len(self.known) >= SHAPES_MAX:
                self.known.clear()
                self.freq.clear()
            self.known[key] = plan
            self._hot = None
        self.freq[key] = self.freq.get(key, 0) + count
        return plan

    def parse(self, line):
        """What ``parse_line(line, ())`` gives, by the line's shape."""
        key, nums = self.split(line)
        plan = self.plan(key, line, nums)
        if plan is None or plan == "full":
            return None if plan is None else parse_line(line, ())
        names, step_at, total_at, stepline = plan
        metrics = {}
        for name, i in names:
            metrics[name] = number(nums[i])
        step = number(nums[step_at]) if step_at is not None else None
        if step is None:
            for k in STEP_KEYS:
                if isinstance(metrics.get(k), (int, float)):
                    step = metrics[k]
                    break
        total = int(nums[total_at]) if total_at is not None else None
        return metrics, step, total, stepline

    def learn(self, line, nums):
        got = parse_line(line, ())
        if got is None:
            return None
        metrics, step, total, stepline = got
        values = [number(n) for n in nums]
        names, at = [], 0
        step_at = total_at = None
        if PREFIX_RE.match(line.strip()):
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
        ok = {name: number(nums[i]) for name, i in names} == got[0]
        ok = ok and (step_at is None or number(nums[step_at]) == got[1] or got[1] is None)
        return ok and (total_at is None or int(nums[total_at]) == got[2])

    def hot(self):
        """The ``HotShape`` of up to HOT_MAX known shapes: those with metrics first (a
        metric line of no scanned shape stops the scan), the most frequent first. A shape
        whose metrics come without a step (a configuration echo) is never scanned."""
        if self._hot is None:
            keys = [k for k, p in self.known.items()
                    if (p is None or (p != "full" and step_column(p) is not None)) and HotShape.fits(k)]
            keys.sort(key=lambda k: (self.known[k] is None, -self.freq.get(k, 0)))
            self._hot = [HotShape(k, self.known[k]) for k in keys[:HOT_MAX]]
        return self._hot


def step_column(plan):
    """Which number of a shape is its step: the prefix's (``step 40:``), else a step name's."""
    names, step_at = plan[0], plan[1]
    if step_at is None:
        step_at = next((j for k in STEP_KEYS for n, j in names if n == k), None)
    return step_at


class HotShape(object):
    """One known shape as a regular expression over raw bytes: ``\\n<line>`` up to the next
    ``\\n``, its numbers captured as runs of number characters."""

    def __init__(self, key, plan):
        self.key, self.plan = key, plan
        self.texts = [t.encode("utf-8") for t in key.split("\x00")]
        self.rx = re.compile(b"\n" + _RUN.join(re.escape(t) for t in self.texts) + b"(?=\n)")
        self.groups = len(self.texts) - 1
        self.names = self.step_at = self.total_at = None
        if plan is not None:
            self.names, _, self.total_at, _ = plan
            self.step_at = step_column(plan)

    @staticmethod
    def fits(key):
        """A captured run is the number the line's split found only when the text after
        each number cannot continue it (the shape of ``v 2.1.0``, a number then ``.0``,
        would take ``v 2.0`` for the number 2)."""
        after = key.split("\x00")[1:]
        for i, text in enumerate(after):
            if (not text and i < len(after) - 1) or (text and text[0] in _RUN_CHARS):
                return False
        return True

    def column(self, rows, j):
        return rows if self.groups == 1 else list(map(itemgetter(j), rows))

    def line(self, row):
        """``\\n<the line>\\n`` of one found row (to find where it is)."""
        if self.groups == 0:
            return row + b"\n"
        row = (row,) if self.groups == 1 else row
        parts = [self.texts[0]]
        for value, text in zip(row, self.texts[1:]):
            parts += [value, text]
        return b"\n" + b"".join(parts) + b"\n"


class Found(object):
    """One shape's lines in a chunk: rows of number runs, and each metric's column as floats."""

    def __init__(self, shape, rows, columns):
        self.shape, self.rows, self.columns = shape, rows, columns

    def raw(self, j, r):
        return (self.rows[r] if self.shape.groups == 1 else self.rows[r][j]).decode("ascii")

    def value(self, j, r):
        return number(self.raw(j, r))

    def step(self, r):
        return self.value(self.shape.step_at, r)


def scan_chunk(shapes, raw, parse_rest):
    """``(text, [Found])`` of chunk ``raw`` (bytes, whole lines), or None when it cannot be
    taken this way: a metric line of no scanned shape, or a number run that is no number. ``text`` is ``\\n`` + the chunk + ``\\n`` (where the
    rows are found again). ``parse_rest(line)``: the metrics of a line of another shape."""
    text = b"\n" + raw + (b"" if raw.endswith(b"\n") else b"\n")
    lines = text.count(b"\n") - 1
    found, matched, hot = [], 0, shapes.hot()
    for shape in hot:
        rows = shape.rx.findall(text)
        if not rows:
            continue
        matched += len(rows)
        shapes.freq[shape.key] = shapes.freq.get(shape.key, 0) + len(rows)
        if shape.plan is None:
            continue
        columns = {}
        try:
            for j in set([shape.step_at] + [j for _, j in shape.names]):
                columns[j] = list(map(float, shape.column(rows, j)))
            if shape.total_at is not None:
                int(rows[-1][shape.total_at])
        except ValueError:
            return None
        found.append(Found(shape, rows, columns))
    if matched > lines:
        return None
    if matched < lines:
        union = re.compile(b"|".join(shape.rx.pattern for shape in hot) or b"(?!)")
        for line in union.sub(b"", text).decode("utf-8", "replace").splitlines():
            if line and parse_rest(line) is not None:
                return None
    return text, found
