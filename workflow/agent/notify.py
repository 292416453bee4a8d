"""Notifications sent from the pod by the watchdog (SPEC §10), through Apprise.

The watchdog stays stdlib-only: each delivery runs Apprise in a child Python (the first
of the candidates that can ``import apprise``: the watchdog's own interpreter,
``_control/notify-venv`` where ``bootstrap`` installs it, the checkout's venv), given
the URL and the message on stdin, so a URL (a secret) is never on a command line, in a
file or in the log. Deliveries happen on a thread of their own:
the watchdog's polling, and the runs, never wait for one. Each URL gets a bounded
number of attempts; every outcome is a line in ``_control/notify.log`` that names the
event and the URL's position in ``WF_NOTIFY_URLS``, never the URL.
"""

import json
import os
import queue
import subprocess
import threading
import time

from .fsutil import utcnow

LOG = "notify.log"
NOTIFY_VENV = "notify-venv"
"""``_control/notify-venv``: where ``bootstrap`` installs Apprise when the pod's python lacks it"""
ATTEMPTS = 3
SEND_TIMEOUT_SECS = 30
SENDER = (
    "import json, sys\n"
    "doc = json.loads(sys.stdin.read())\n"
    "import apprise\n"
    "a = apprise.Apprise()\n"
    "if not a.add(doc['url']):\n"
    "    sys.exit(3)\n"
    "sys.exit(0 if a.notify(title=doc['title'], body=doc['body']) else 1)\n"
)


def can_import_apprise(python):
    """Whether ``python`` (a path) can ``import apprise``."""
    try:
        return subprocess.call([python, "-c", "import apprise"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60) == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Notifier(object):
    """Queues events and delivers them in the background."""

    def __init__(self, ctl, urls, events, pythons, backoff=1.0, timeout=SEND_TIMEOUT_SECS):
        self.ctl = ctl
        self.urls = [u for u in urls or [] if u]
        self.events = set(events or [])
        self.pythons = [os.path.expanduser(p) for p in pythons or [] if p]
        self.backoff = backoff
        self.timeout = timeout
        """seconds one delivery attempt may take (a URL that never answers)"""
        self.queue = queue.Queue()
        self._python = None
        self._thread = None

    def wants(self, event):
        return bool(self.urls) and event in self.events

    def emit(self, event, title, body):
        if not self.wants(event):
            return
        self.queue.put((event, title, body))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
            self._thread.start()

    def drain(self, secs):
        """Wait up to ``secs`` for the queued deliveries (before the pod goes away)."""
        end = time.time() + secs
        while self.queue.unfinished_tasks and time.time() < end:
            time.sleep(0.05)

    def log(self, text):
        with open(os.path.join(self.ctl, LOG), "a") as fh:
            fh.write("%s %s\n" % (utcnow(), text))

    def python(self):
        """The first candidate that imports Apprise (looked for again while none does:
        ``bootstrap`` may install it meanwhile)."""
        if not self._python:
            self._python = next((exe for exe in self.pythons if can_import_apprise(exe)), None)
        return self._python

    def _work(self):
        while True:
            event, title, body = self.queue.get()
            try:
                self._deliver(event, title, body)
            except Exception as exc:  # noqa: BLE001 - a notification never takes the watchdog down
                self.log("%s: not sent (%s)" % (event, type(exc).__name__))
            finally:
                self.queue.task_done()

    def _deliver(self, event, title, body):
        exe = self.python()
        if not exe:
            self.log("%s: not sent: apprise is not installed for the pod's python (wf bootstrap installs it "
                     "into _control/%s)" % (event, NOTIFY_VENV))
            return
        payload_base = {"title": title, "body": body}
        for i, url in enumerate(self.urls, 1):
            for attempt in range(1, ATTEMPTS + 1):
                code = self._send(exe, dict(payload_base, url=url), self.timeout)
                if code == 0:
                    self.log("%s: url #%d: delivered (attempt %d)" % (event, i, attempt))
                    break
                why = {3: "not an Apprise URL", "timeout": "no answer within %gs" % self.timeout}.get(code, "exit %s" % code)
                self.log("%s: url #%d: failed (attempt %d/%d, %s)" % (event, i, attempt, ATTEMPTS, why))
                if code == 3:
                    break
                if attempt < ATTEMPTS:
                    time.sleep(self.backoff * attempt)

    @staticmethod
    def _send(exe, doc, timeout):
        try:
            proc = subprocess.run([exe, "-c", SENDER], input=json.dumps(doc).encode(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout)
            return proc.returncode
        except subprocess.TimeoutExpired:
            return "timeout"
        except OSError as exc:
            return exc.errno
