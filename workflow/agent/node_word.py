"""The word node 0 leaves for the nodes that come after its end (SPEC §9).

A node whose pod was busy with the runs queued before it can start after node 0 has
already ended (node 0 timed out waiting for it, failed, or was ended because another
node failed). Nothing listens on node 0's watch port any more, and a refused connection
looks like a node 0 that has not started yet: that node would wait for torchrun's join
timeout (30 minutes), its pod held for nothing.

So when node 0's job ends by itself, not with ``success``, before some nodes were ever
heard from, its wrapper leaves a small process behind (``podagent node-word DIR
NONCE``, its own session, described in ``DIR/node_word.json``) that listens on the
watch port and answers each of those nodes' ``hello <i>`` with node 0's ``end <state>
<why>``, as node 0 would have: the node ends at once with node 0's state, and the run's
state stays node 0's. It exits once every such node was told, when its run dir gets a
new launch (another attempt: the record names another nonce), or after ``WORD_SECS``;
``wf pod-down`` ends it with the pod's other processes (``halt``).
"""

import os
import select
import signal
import socket
import subprocess
import time

from .fsutil import read_json, write_json_atomic
from .job_status import STATUS_FILE, WRAPPER_LOG
from .protocol import AgentError

WORD_COMMAND = "node-word"
WORD_FILE = "node_word.json"
#: How long node 0's word waits for the nodes that never came (a pod's queue ahead of a
#: node seldom lasts longer; a node later than that waits for torchrun's join timeout).
WORD_SECS = 6 * 3600.0
#: How long it tries to take over the watch port (node 0's watch is closing it).
BIND_SECS = 10.0


def leave(d, nonce, host, port, ranks, state, why):
    """Start the process answering ``ranks`` with node 0's end (``state``, ``why``)
    on ``host:port``; returns its pid, or None when it could not be started."""
    from .job_launch import agent_argv

    path = os.path.join(d, WORD_FILE)
    doc = {"nonce": nonce, "host": host, "port": int(port), "ranks": sorted(ranks), "state": state,
           "why": why or "", "until": time.time() + WORD_SECS, "pid": None}
    try:
        write_json_atomic(path, doc)
        with open(os.devnull, "rb") as null_in, open(os.path.join(d, WRAPPER_LOG), "ab") as log:
            proc = subprocess.Popen(agent_argv() + [WORD_COMMAND, d, nonce], stdin=null_in, stdout=log, stderr=log,
                                    cwd=d, close_fds=True, start_new_session=True)
        doc["pid"] = proc.pid
        write_json_atomic(path, doc)
    except (IOError, OSError):
        return None
    return proc.pid


def live_pid(d):
    """The pid of ``d``'s word process while it runs (its command line holds the
    command and the nonce: a reused pid is not taken for it), else None."""
    from .job_scan import proc_cmdline, proc_stat

    doc = _read(d, WORD_FILE)
    pid = doc.get("pid") if doc else None
    if not isinstance(pid, int) or not doc.get("nonce"):
        return None
    st = proc_stat(pid)
    cmdline = proc_cmdline(pid) or b""
    if st is None or st[0] in ("Z", "X") or WORD_COMMAND.encode("ascii") not in cmdline \
            or str(doc["nonce"]).encode("ascii") not in cmdline:
        return None
    return pid


def _read(d, name):
    try:
        return read_json(os.path.join(d, name), default=None)
    except AgentError:
        return None


def _listen(host, port):
    from .net import iface_of

    end = time.monotonic() + BIND_SECS
    while True:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((host if iface_of(host) else "0.0.0.0", port))
            srv.listen(64)
            return srv
        except OSError:
            srv.close()
            if time.monotonic() > end:
                return None
            time.sleep(0.2)


def word_main(argv):
    """``podagent node-word DIR NONCE``: answer the nodes node 0 never heard from."""
    from .node_watch import Line

    if len(argv) != 2:
        return 2
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the wrapper that started it blocks them
    d, nonce = argv
    doc = _read(d, WORD_FILE)
    if not doc or doc.get("nonce") != nonce:
        return 3
    srv = _listen(doc["host"], int(doc["port"]))
    if srv is None:
        return 1
    waiting = set(int(r) for r in doc["ranks"])
    line = "end %s %s" % (doc["state"], doc["why"])
    conns, next_check = [], 0.0
    try:
        while waiting and time.time() < float(doc["until"]):
            if time.monotonic() >= next_check:
                if (_read(d, STATUS_FILE) or {}).get("nonce") != nonce:
                    break  # the run dir holds another launch now: this word is stale
                next_check = time.monotonic() + 5.0
            ready, _, _ = select.select([srv] + conns, [], [], 5.0)
            for item in ready:
                if item is srv:
                    try:
                        conns.append(Line(srv.accept()[0]))
                    except OSError:
                        pass
                    continue
                lines = item.read()
                for text in lines or ():
                    words = text.split(" ")
                    if words[0] == "hello" and len(words) > 1 and words[1].isdigit():
                        item.send(line)
                        waiting.discard(int(words[1]))
                        lines = None
                        break
                if lines is None:
                    conns.remove(item)
                    item.close()
    finally:
        for conn in conns:
            conn.close()
        srv.close()
    return 0
