"""Parsing by line shape, and whole chunks of a log scanned in C by the shapes already known.

Lines that differ only in their numbers (``iter 10: loss 3.2``, ``iter 11: loss 3.1``)
parse the same way: the full parse (``metrics_parse.parse_line``) runs once per shape,
and its *plan* (which number is which metric, which is the step) serves every later
line. A shape whose numbers cannot be told apart (plan ``"full"``) is parsed in full
every time; a shape without metrics has plan None.

``scan_chunk`` is what makes a big log cheap: each of the most frequent known shapes
becomes one regular expression over the raw bytes of a whole chunk, whose ``findall``
gives that shape's lines, their numbers cut out of all of them at once as columns
(``HotShape.columns``), with no Python per line. It answers only when every other line
of the chunk holds no metric: a tqdm progress line, or a line that cannot hold one
(``rest_rx``: no ``=``, no dict or step prefix), else one parsed (``parse_rest``).
"""

import re

from .metrics_parse import PREFIX_RE, SPLIT_RE, STEP_KEYS, number, parse_line

SHAPES_MAX = 4096
#: Shapes scanned per chunk (each is one pass of a regular expression over it).
HOT_MAX = 12
#: A number in a shape's regular expression: a run of the characters numbers are made
#: of (every captured run must then convert with ``float``, or the chunk goes line by line).
_RUN = b"[-+0-9.eE]++"
_RUN_CHARS = "-+0123456789.eE"
#: ``bytes.translate`` table: number characters kept, every other byte a space.
_ONLY_NUMBER_CHARS = bytes(c if chr(c) in _RUN_CHARS else 32 for c in range(256))
#: Line ends of ``str.splitlines`` (line by line) other than ``\n`` and ``\r``: a chunk
#: holding one goes line by line.
_OTHER_LINE_ENDS = b"\x0b\x0c\x1c\x1d\x1e"
_OTHER_LINE_ENDS_UTF8 = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
#: What a line's metrics need (``metrics_parse.parse_line``): a dict or a step prefix first
#: (after any characters that are no letter or digit: ``str.strip`` takes any Unicode
#: space), or else an ``=`` somewhere in it.
_MAY_HOLD_METRICS = rb"(?=[^\n\w{\[(]*[{sSiIeE\[(]|[^\n]*=)"


class Shapes(object):
    """The known shapes of one log: ``key`` (its text, numbers cut out) -> plan."""

    def __init__(self):
        self.known = {}
        self.freq = {}  # key -> lines seen: the most frequent are scanned
        self.echoes = set()  # keys of configuration echo lines: not scanned
        self._hot, self._rest, self._union = None, {}, None

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

    def echo(self, line):
        """``line`` was a configuration echo: its shape takes no scan slot (it is seen once)."""
        self.echoes.add(self.split(line)[0])
        self._hot = None

    def hot(self):
        """The ``HotShape`` of up to HOT_MAX known shapes: those with metrics first (a
        metric line of no scanned shape stops the scan), the most frequent first."""
        if self._hot is None:
            keys = [k for k, p in self.known.items() if p != "full" and k not in self.echoes and HotShape.fits(k)]
            keys.sort(key=lambda k: (self.known[k] is None, -self.freq.get(k, 0)))
            self._hot = [HotShape(k, self.known[k]) for k in keys[:HOT_MAX]]
            self._rest, self._union = {}, None
        return self._hot

    def union_rx(self):
        """Any hot shape's line."""
        if self._union is None:
            self._union = re.compile(b"|".join(shape.rx.pattern for shape in self.hot()) or b"(?!)")
        return self._union

    def rest_rx(self, equals=True):
        """A line that may hold metrics (``_MAY_HOLD_METRICS``; without ``equals``, in a
        chunk with no ``=``) and is neither of a hot shape nor a tqdm progress line: what a
        scan must read line by line."""
        if self._rest.get(equals) is None:
            hot = b"|".join(shape.body for shape in self.hot()) or b"(?!)"
            may = _MAY_HOLD_METRICS if equals else _MAY_HOLD_METRICS.replace(b"|[^\\n]*=", b"")
            self._rest[equals] = re.compile(b"\n" + may + b"(?!(?:" + hot + b")\n)(?!" + TQDM_LINE.pattern[2:] + b")")
        return self._rest[equals]


def step_column(plan):
    """Which number of a shape is its step: the prefix's (``step 40:``), else a step name's."""
    names, step_at = plan[0], plan[1]
    if step_at is None:
        step_at = next((j for k in STEP_KEYS for n, j in names if n == k), None)
    return step_at


class HotShape(object):
    """One known shape as a regular expression over raw bytes: ``\\n<line>`` up to the next
    ``\\n``, its numbers as runs of number characters. The regular expression captures
    nothing (groups cost more than the match): the numbers of all matched lines are cut
    out at once, every character that is no number character made a space
    (``bytes.translate``) and the result split, each number then at a fixed place among
    the words of its line (``self.at``)."""

    def __init__(self, key, plan):
        self.key, self.plan = key, plan
        self.texts = [t.encode("utf-8") for t in key.split("\x00")]
        self.rx = re.compile(b"\n" + _RUN.join(re.escape(t) for t in self.texts) + b"(?=\n)")
        self.body = self.rx.pattern[1:-5]  # the line without its ends (``rest_rx``)
        self.start = b"\n" + self.texts[0]
        self.groups = len(self.texts) - 1
        self.at, words = [], 0
        for text in self.texts[:-1]:  # the words a line splits into: its texts' number characters, then each number
            words += len(text.translate(_ONLY_NUMBER_CHARS).split())
            self.at.append(words)
            words += 1
        self.words = words + len(self.texts[-1].translate(_ONLY_NUMBER_CHARS).split())
        self.names = self.step_at = self.total_at = None
        if plan is not None:
            self.names, _, self.total_at, _ = plan
            self.step_at = step_column(plan)

    @staticmethod
    def fits(key):
        """A captured run is the number the line's split found only when the text around
        each number cannot continue it: the text after a number starts with no number
        character (the shape of ``v 2.1.0``, a number then ``.0``, would take ``v 2.0``
        for the number 2), the text before one ends with no sign (``a+-5``)."""
        texts = key.split("\x00")
        for i, text in enumerate(texts[1:]):
            if (not text and i < len(texts) - 2) or (text and text[0] in _RUN_CHARS):
                return False
        return not any(text and text[-1] in "+-" for text in texts[:-1])

    def columns(self, rows):
        """The numbers (bytes) of matched lines ``rows``: {column: [one per row]}."""
        words = b"".join(rows).translate(_ONLY_NUMBER_CHARS).split()
        if len(words) != self.words * len(rows):
            raise ValueError("a line of %r split into other words" % self.key)
        return {j: words[at::self.words] for j, at in enumerate(self.at)}


class Found(object):
    """One shape's lines in a chunk: ``rows`` (each ``\\n<line>``), the numbers of each
    column (bytes), and per metric column (min, its first row, max, its first row)."""

    def __init__(self, shape, rows, raw, stats):
        self.shape, self.rows, self.raws, self.stats = shape, rows, raw, stats
        self.step_base = None  # the step of every row of a shape without one (``LogMetrics._take``)

    def raw(self, j, r):
        return self.raws[j][r].decode("ascii")

    def value(self, j, r):
        return number_of_bytes(self.raws[j][r])

    def step(self, r):
        if self.shape.step_at is None:
            return self.step_base(r)
        return self.value(self.shape.step_at, r)

    def steps(self):
        """Every row's step."""
        if self.shape.step_at is None:
            return [self.step_base(r) for r in range(len(self.rows))]
        return numbers_of_bytes(self.raws[self.shape.step_at])


def number_of_bytes(raw):
    """``metrics_parse.number`` of a number run that converts (an int when all digits)."""
    return int(raw) if raw.lstrip(b"+-").isdigit() else float(raw)


def numbers_of_bytes(col):
    """``number_of_bytes`` of each of a column, a whole column at once when it can."""
    joined = b"".join(col)
    if joined.isdigit():
        return list(map(int, col))
    if joined.count(b".") == len(col):  # a point in each: all floats
        return list(map(float, col))
    return list(map(number_of_bytes, col))


def column_stats(col):
    """(min, its first index, max, its first index) of a column of numbers (bytes);
    ValueError when one is no number. Each distinct string is converted once when they
    repeat (a metric printed with a few decimals does)."""
    if len(set(col[:256])) > 128:  # mostly distinct
        values = list(map(float, col))
        lo, hi = min(values), max(values)
        return lo, values.index(lo), hi, values.index(hi)
    firsts = list(dict.fromkeys(col))  # in the order they first come: the first of equal values wins
    values = list(map(float, firsts))
    lo, hi = min(values), max(values)
    return lo, col.index(firsts[values.index(lo)]), hi, col.index(firsts[values.index(hi)])


def check_numbers(col):
    """ValueError when a string of ``col`` is no number."""
    if not b"".join(col).isdigit():  # (digits only, the common step column, are numbers)
        for _ in map(float, col):
            pass


def scan_chunk(shapes, raw, parse_rest):
    """``(text, [Found], tqdm)`` of chunk ``raw`` (bytes, whole lines), or None when it
    cannot be taken this way: a metric line of no scanned shape, or a number run that is
    no number. ``text`` is ``\\n`` + the chunk + ``\\n``, tqdm's redraws (``\\r``) made line
    ends (where the rows are found again); ``tqdm`` the last progress line's match, or None.
    ``parse_rest(line)``: the metrics of a line of another shape."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text = b"\n" + raw + (b"" if raw.endswith(b"\n") else b"\n")
    size = len(text) - 1  # the bytes of the lines, each with its \n first (as the rows are)
    found, covered, hot = [], 0, shapes.hot()
    for shape in hot:
        if shape.start not in text:  # found at memory speed: no pass of the regular expression
            continue
        rows = shape.rx.findall(text)
        if not rows:
            continue
        covered += sum(map(len, rows))  # (faster than counting lines)
        shapes.freq[shape.key] = shapes.freq.get(shape.key, 0) + len(rows)
        if shape.plan is None:
            continue
        try:
            raws = shape.columns(rows)
            stats = {j: column_stats(raws[j]) for _, j in shape.names}
            for j in set(raws) - set(stats):  # any other number: no number, and the line is of another shape
                check_numbers(raws[j])
            if shape.total_at is not None:
                int(raws[shape.total_at][-1])
        except ValueError:
            return None
        found.append(Found(shape, rows, raws, stats))
    if covered > size:
        return None
    if covered < size and (len(text.translate(None, _OTHER_LINE_ENDS)) < len(text)
                            or any(end in text for end in _OTHER_LINE_ENDS_UTF8)):
        return None  # (lines of hot shapes hold none)
    if covered < size and shapes.rest_rx(b"=" in text).search(text):  # a line of no hot shape that may hold metrics
        for line in shapes.union_rx().sub(b"", text).decode("utf-8", "replace").splitlines():
            if line and not TQDM_LINE.match(("\n" + line).encode("utf-8")) and parse_rest(line) is not None:
                return None
    return text, found, last_tqdm(text)


#: A tqdm progress line (``\\n`` first), as ``LogMetrics.feed_line`` tells one: no new
#: attempt's line, a marker of tqdm, and its ``n/total [elapsed<eta`` (the first in the line).
TQDM_LINE = re.compile(rb"\n(?!(?=\[podflow\] run )[^\n]* started by sweep )(?=[^\n]*(?:it/s\]|s/it\]|\|))[^\n]*?(\d+)/(\d+)[^\S\n]*\[([\d:]+)<([\d:?]+)[^\n]*")


def last_tqdm(text):
    """The match of the last tqdm progress line of ``text``, or None (backwards from its end,
    looking only at lines with a ``<``)."""
    end = len(text)
    while True:
        at = text.rfind(b"<", 0, end)
        if at < 0:
            return None
        start = text.rfind(b"\n", 0, at)
        m = TQDM_LINE.match(text, start)
        if m:
            return m
        end = start
