"""The watchdog beside each node of a multi-node run (SPEC §9): a node that fails, times
out or is lost ends the others within 30 s, podflow-side, with nobody watching from a
laptop, instead of after gloo/NCCL/c10d's own timeouts (30 minutes and more when a pod
is cut off: nothing closes its TCP connections).

It runs as a thread of each node's wrapper (``job_wrapper``), which starts it when the
job's environment has ``WF_NODE_WATCH=<addr of node 0>:<port>`` (a second port picked on
node 0 with the rendezvous port) and ``WF_NNODES`` > 1. A star, one line-based TCP
connection per node ≥ 1 to node 0:

* node 0 (the hub) listens; node i connects (retrying: node 0 may start later), says
  ``hello <i>``, then ``beat`` every ``BEAT_SECS``; the hub answers ``beat`` to each;
* a node whose own job ends says so: node i ``bye <state>``, node 0 ``end <state>
  <why>``. A ``bye``/``end`` other than ``success`` ends the receiver's job with that
  state (the hub then tells the other nodes, so every node ends with it);
* a node heard from once and then silent for ``LOST_SECS`` (its pod died or was cut
  off, its processes were killed or frozen: beats stop, whatever TCP does) is lost:
  the hub ends its job as ``lost`` (and tells the others), a node whose hub went
  silent ends as ``lost``;
* a connection closed without a word (no ``bye``/``end``: the other side's process
  died, as only a killed wrapper leaves it) that is not made again within
  ``VANISH_SECS`` is a lost node too, sooner. And when this node's own job fails
  meanwhile (torch's collectives break as soon as a peer's processes die), its end is
  taken for that loss (``lost_peer``): every node of the run then says ``lost``, the
  run's state, with the node that vanished as the cause.

Only silence that lasts counts (every line received resets it; a connection that drops
is retried meanwhile), so a loaded machine that delays a beat by seconds never ends a
healthy run. A node never heard from is not counted: torchrun's join timeout covers a
node that never comes. The run's timeout is node 0's (the only node with a deadline):
when it passes, node 0 ends as ``timed_out`` and so does every other node.
"""

import os
import select
import socket
import threading
import time

from .job_status import LOST, SUCCESS, TERMINAL

BEAT_SECS = 2.0
LOST_SECS = 15.0
VANISH_SECS = 5.0
WATCH_VAR = "WF_NODE_WATCH"


def from_env(env, wake):
    """The watchdog this job's environment asks for (``WF_NODE_WATCH``), or None."""
    endpoint = env.get(WATCH_VAR)
    try:
        rank, nnodes = int(env.get("WF_NODE_RANK") or 0), int(env.get("WF_NNODES") or 1)
    except ValueError:
        return None
    if not endpoint or nnodes < 2 or ":" not in endpoint:
        return None
    host, port = endpoint.rsplit(":", 1)
    return NodeWatch(rank, nnodes, host, int(port), wake)


def _state_of(word):
    return word if word in TERMINAL else LOST


class Line(object):
    """One TCP connection carrying ``\\n``-ended lines, read without blocking."""

    def __init__(self, sock):
        sock.setblocking(False)
        self.sock, self.buf, self.rank = sock, b"", None

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """Complete lines received; None once the other side closed."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode("utf-8", "replace").strip() for line in lines]

    def send(self, text):
        try:
            self.sock.sendall((text.replace("\n", " ") + "\n").encode("utf-8"))
            return True
        except OSError:  # a full buffer (a frozen peer) or a closed one: silence tells
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class NodeWatch(object):
    """One node's side of the watch. ``reason`` becomes ``(state, why)`` when this node's
    job must end because of another node; ``wake()`` is then called (the wrapper's loop
    wakes and ends its process group). ``ending(state, why)``: this node's job ends: tell
    the others (once)."""

    def __init__(self, rank, nnodes, host, port, wake):
        self.rank, self.nnodes, self.host, self.port, self.wake = rank, nnodes, host, port, wake
        self.reason = None
        self.heard = set()
        """Ranks node 0 heard from (said ``hello``)."""
        self._vanished = {}  # rank -> when its connection closed without a word (monotonic)
        self._told = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns = []
        self._thread = threading.Thread(target=self._hub if rank == 0 else self._peer, name="node-watch")
        self._thread.daemon = True

    def start(self):
        self._thread.start()
        return self

    def _end(self, state, why):
        if self.reason is None and not self._stop.is_set():
            self.reason = (state, why)
            self.wake()

    def ending(self, state, why=None):
        """This node's job ends with ``state``: the hub tells every node (``end``), a node
        tells the hub (``bye``); the watch stops."""
        with self._lock:
            if self._told:
                return
            self._told = True
            self._stop.set()
            line = ("end %s %s" % (state, why or "")) if self.rank == 0 else ("bye %s" % state)
            if self.rank and not self._conns:  # ended before it ever reached node 0: one try now
                self._conns = [c for c in [_connect(self.host, self.port)] if c is not None]
                for conn in self._conns:
                    conn.send("hello %d" % self.rank)
            for conn in self._conns:
                conn.send(line)
                conn.close()
            self._conns = []

    def leave_word(self, d, nonce, state, why):
        """Node 0's job ended by itself with ``state`` (not by a canceller): nodes never
        heard from will still start (their pods were busy): leave them node 0's word
        (``node_word``). Returns the word process's pid, or None."""
        from .node_word import leave

        late = sorted(set(range(1, self.nnodes)) - self.heard)
        if self.rank != 0 or state == SUCCESS or not late:
            return None
        self._thread.join(2.0)  # the hub closes the watch port first
        return leave(d, nonce, self.host, self.port, late, state, why)

    # -- node 0
    def _hub(self):
        from .net import iface_of

        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((self.host if iface_of(self.host) else "0.0.0.0", self.port))
            srv.listen(64)
        except OSError as exc:
            srv.close()
            _note("node watch: cannot listen on %s:%d (%s): the other nodes are not watched" % (
                self.host, self.port, exc))
            return
        heard, done = {}, set()  # rank -> last heard (monotonic); ranks that said bye
        next_beat = 0.0
        try:
            while not self._stop.is_set():
                with self._lock:
                    conns = list(self._conns)
                try:
                    ready, _, _ = select.select([srv] + conns, [], [], 0.5)
                except (OSError, ValueError):
                    ready = []
                now = time.monotonic()
                for item in ready:
                    if item is srv:
                        try:
                            sock, _ = srv.accept()
                        except OSError:
                            continue
                        with self._lock:
                            if self._told:
                                sock.close()
                                continue
                            self._conns.append(Line(sock))
                        continue
                    lines = item.read()
                    if lines is None:
                        with self._lock:
                            if item in self._conns:
                                self._conns.remove(item)
                            if item.rank is not None and item.rank not in done:
                                self._vanished.setdefault(item.rank, now)
                        item.close()
                        continue
                    for line in lines:
                        words = line.split(" ", 2)
                        if words[0] == "hello" and len(words) > 1 and words[1].isdigit():
                            item.rank = int(words[1])
                            self.heard.add(item.rank)
                            with self._lock:
                                self._vanished.pop(item.rank, None)  # it came back
                            _note("node watch: node %d joined" % item.rank)
                        if item.rank is None:
                            continue
                        heard[item.rank] = now
                        if words[0] == "bye":
                            done.add(item.rank)
                            state = _state_of(words[1] if len(words) > 1 else "")
                            if state != SUCCESS:
                                self._end(state, "node %d ended %s" % (item.rank, state))
                if now >= next_beat:
                    with self._lock:
                        for conn in list(self._conns):
                            conn.send("beat")
                    next_beat = now + BEAT_SECS
                for rank, at in heard.items():
                    if rank not in done and now - at > LOST_SECS:
                        self._end(LOST, "node %d was lost: silent for %ds (its pod is down or cut off, or its "
                                        "processes were killed)" % (rank, LOST_SECS))
                self._vanish_check(now)
        finally:
            srv.close()

    # -- node i >= 1
    def _peer(self):
        conn, heard, next_beat = None, None, 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if conn is None:
                got = _connect(self.host, self.port)
                with self._lock:
                    if got is not None and not self._told:
                        conn = got
                        self._conns = [conn]
                        self._vanished.pop(0, None)  # node 0 answers again
                        conn.send("hello %d" % self.rank)
                        next_beat = 0.0
                    elif got is not None:
                        got.close()
                if conn is None:
                    self._silent(heard, now)
                    self._vanish_check(now)
                    self._stop.wait(1.0)
                    continue
            if now >= next_beat:
                with self._lock:
                    if not self._told:
                        conn.send("beat")
                next_beat = now + BEAT_SECS
            try:
                ready, _, _ = select.select([conn], [], [], 0.5)
            except (OSError, ValueError):
                ready = []
            lines = conn.read() if ready else []
            if lines is None:
                with self._lock:
                    self._conns = []
                    if not self._stop.is_set() and self.reason is None:
                        self._vanished.setdefault(0, time.monotonic())
                conn.close()
                conn = None
                lines = []
            for line in lines:
                heard = time.monotonic()
                words = line.split(" ", 2)
                if words[0] == "end":
                    state = _state_of(words[1] if len(words) > 1 else "")
                    if state == SUCCESS:
                        self._stop.set()  # node 0 is done: this node ends by itself
                    else:
                        self._end(state, "node 0 ended %s: %s" % (state, words[2] if len(words) > 2 else ""))
            self._silent(heard, time.monotonic())

    def _vanish_check(self, now):
        with self._lock:
            gone = [rank for rank, at in sorted(self._vanished.items()) if now - at > VANISH_SECS]
        if gone:
            self._end(LOST, self._vanished_why(gone[0]))

    @staticmethod
    def _vanished_why(rank):
        return ("node %d was lost: its watch connection closed without a word and was not made again (its "
                "processes were killed, or its pod died)" % rank)

    def lost_peer(self, settle=0.5):
        """Why this node's own failure is taken for a lost node's: a node whose connection
        closed without a word (node 0's, for a node ≥ 1) and did not come back; None when
        none did. Waits up to ``settle`` s for the watch to read what already arrived."""
        end = time.monotonic() + settle
        while True:
            with self._lock:
                gone = sorted(self._vanished)
            if gone:
                return self._vanished_why(gone[0])
            if time.monotonic() >= end:
                return None
            time.sleep(0.05)

    def _silent(self, heard, now):
        if heard is not None and now - heard > LOST_SECS:
            self._end(LOST, "node 0 was lost: silent for %ds (its pod is down or cut off, or its processes were "
                            "killed)" % LOST_SECS)


def _connect(host, port):
    try:
        return Line(socket.create_connection((host, port), timeout=BEAT_SECS))
    except OSError:
        return None


def tell(env, state):
    """A node that ends without its wrapper ever running (its launch failed on the pod)
    tells node 0 (``bye``), retrying for a minute in a daemon thread (node 0 may start
    a little later): node 0 ends with ``state`` and ends the other nodes."""
    watch = from_env(env, wake=lambda: None)
    if watch is None or watch.rank == 0:
        return

    def send():
        end = time.monotonic() + 60
        while time.monotonic() < end:
            conn = _connect(watch.host, watch.port)
            if conn is not None:
                ok = conn.send("hello %d" % watch.rank) and conn.send("bye %s" % state)
                conn.close()
                if ok:
                    return
            time.sleep(1.0)

    t = threading.Thread(target=send, name="node-watch-tell")
    t.daemon = True
    t.start()


def _note(text):
    try:
        os.write(2, ("%s\n" % text).encode("utf-8"))
    except OSError:
        pass
