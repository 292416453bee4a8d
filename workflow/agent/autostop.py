"""The watchdog on the pod (SPEC §10): ends an idle, expired or over-budget pod with no client.

``autostop.start`` (called by ``pod-up`` and ``bootstrap``) reads its settings as the
JSON request on stdin, forks a daemon (own session, stdio on ``_control/autostop.log``)
and returns; the daemon replaces any earlier watchdog of these outputs and polls:

- *idle*: no tracked task, sweep runner or run is pending/running (the agent's own repair
  pass decides, so a dead job is not "running") and every GPU is under
  ``gpu_util_below`` percent (``nvidia-smi``; no GPUs: activity alone), for ``idle_secs``;
- *ttl*: the pod's age reached ``ttl_at``;
- *budget*: the pool's spend (every pod's, from the client's ledger at launch, plus the
  running pods' price per hour since) reached ``max_cost_usd``; every pod of the pool
  counts the same way, so the whole pool ends.

Then it writes ``_control/autostop.json`` ``{"action", "reason", "at"}`` and acts:
``stop`` or ``destroy`` through the provider's API, or ``command`` (a shell command, e.g.
``sudo poweroff``). It destroys only when every run on the pod was fetched (``fetch``
marks them in ``_control/fetched.json``), else it stops. The API credential is the
one the provider put into the pod for this pod (RunPod ``RUNPOD_POD_ID`` /
``RUNPOD_API_KEY``, Vast ``CONTAINER_ID`` / ``CONTAINER_API_KEY``; from the watchdog's
environment or PID 1's, where the provider sets them); an account key is used only
when the client sent one (``autostop.allow_account_key``). Settings and any key live
only in the daemon's memory: never in a file, its command line or its environment.
``_control/autostop-state.json`` (no secrets) says what it sees, for ``pod-status``.
"""

import json
import os
import signal
import subprocess
import sys
import time

from . import procs
from .fsutil import expand, locked, read_json, utcnow, write_json_atomic
from .notify import NOTIFY_VENV, Notifier
from .protocol import AgentError

DECISION = "autostop.json"
STATE = "autostop-state.json"
PIDFILE = "autostop.pid"
LOCK = "autostop.lock"
LOG = "autostop.log"
FETCHED = "fetched.json"
OP = "autostop.start"

#: where each provider puts this pod's own id and API key inside the pod
POD_CREDENTIALS = {"runpod": ("RUNPOD_POD_ID", "RUNPOD_API_KEY"), "vastai": ("CONTAINER_ID", "CONTAINER_API_KEY")}
DEFAULT_BASES = {"runpod": "https://api.runpod.io", "vastai": "https://console.vast.ai", "lium": "https://lium.io/api"}


def _ctl(outputs):
    return os.path.join(expand(outputs), "_control")


def log(text):
    sys.stderr.write("%s %s\n" % (utcnow(), text))
    sys.stderr.flush()


# ---------------------------------------------------------------- activity


class Activity(object):
    """What keeps the pod busy. Status files are re-read only when they change (mtime),
    and a terminal one never again, so a poll over a thousand finished runs stays cheap."""

    def __init__(self, outputs):
        self.outputs = expand(outputs)
        self._seen = {}  # status dir -> (mtime, state, started_at)
        self._primed = False
        self.changes = []
        """(name, state before, state now) seen since the caller last emptied it: a new
        state, or a new start (a run that started and ended between two polls); ``before``
        is None for a job that appeared after the first scan"""

    def _dirs(self):
        tasks = os.path.join(self.outputs, "_tasks")
        out = [os.path.join(self.outputs, "_control", "sweep", "runner")]
        for base, skip_private in ((tasks, False), (self.outputs, True)):
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                if skip_private and name.startswith(("_", ".")):
                    continue
                out.append(os.path.join(base, name))
        return out

    def busy(self):
        """Names of what is pending or running now (empty: idle)."""
        names = []
        for d in self._dirs():
            try:
                mtime = os.stat(procs.status_path(d)).st_mtime
            except OSError:
                continue
            seen = self._seen.get(d)
            if seen and seen[0] == mtime and seen[1] not in procs.ACTIVE:
                continue  # unchanged since it was last read, and not active
            try:
                doc = procs.refresh_status(d)  # the repair pass: a dead job is not running
            except AgentError:
                continue
            state, started = (doc or {}).get("state"), (doc or {}).get("started_at")
            self._seen[d] = (mtime, state, started)
            if (seen and seen[1:] != (state, started)) or (not seen and self._primed):
                self.changes.append((os.path.relpath(d, self.outputs), seen[1] if seen else None, state))
            if state in procs.ACTIVE:
                names.append(os.path.relpath(d, self.outputs))
        self._primed = True
        return sorted(names)


def gpu_utils():
    """Utilisation of each GPU in percent, or None when there is no ``nvidia-smi``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    utils = []
    for line in out.decode("ascii", "replace").splitlines():
        try:
            utils.append(float(line.strip()))
        except ValueError:
            continue
    return utils


# ---------------------------------------------------------------- fetched runs


def _run_dirs(outputs):
    try:
        names = sorted(os.listdir(outputs))
    except OSError:
        return []
    return [n for n in names if not n.startswith(("_", ".")) and os.path.isfile(procs.status_path(os.path.join(outputs, n)))]


def _stamp(doc):
    return {"attempt": (doc or {}).get("attempt"), "finished_at": (doc or {}).get("finished_at")}


def mark_fetched(request):
    """``{runs: [ids]}``: these runs, as they are now, were fetched to the client."""
    outputs = expand(request["outputs_dir"])
    path = os.path.join(_ctl(outputs), FETCHED)
    with locked(path + ".lock"):
        doc = read_json(path, default={}, what="fetched list")
        for run in request.get("runs") or []:
            d = os.path.join(outputs, procs.validate_id(run, "run id"))
            doc[run] = dict(_stamp(procs.read_status(d)), at=utcnow())
        write_json_atomic(path, doc)
    return {"marked": sorted(request.get("runs") or [])}


def unfetched_runs(outputs):
    """Runs on the pod never fetched as they are now (a run that ran again after its
    fetch counts as unfetched)."""
    try:
        fetched = read_json(os.path.join(_ctl(outputs), FETCHED), default={}, what="fetched list")
    except AgentError:
        fetched = {}
    out = []
    for run in _run_dirs(outputs):
        mark = fetched.get(run)
        now = _stamp(procs.read_status(os.path.join(outputs, run)))
        if not mark or {k: mark.get(k) for k in now} != now:
            out.append(run)
    return out


# ---------------------------------------------------------------- the provider's API


def _pid1_env():
    try:
        with open("/proc/1/environ", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def pod_credential(provider):
    """(pod id, key) the provider injected for this pod, or None."""
    names = POD_CREDENTIALS.get(provider)
    if not names:
        return None
    for env in (os.environ, _pid1_env()):
        pod_id, key = env.get(names[0]), env.get(names[1])
        if pod_id and key:
            return pod_id, key
    return None


def _http(method, url, headers, body=None, answer=False):
    """The status of one API call (``answer``: its JSON body instead)."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    hdrs = dict(headers, Accept="application/json")
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read().decode("utf-8") or "null") if answer else resp.status


def _last_of_overlay(base, auth, overlay, pod_id):
    """Whether every other instance of the Vast overlay ``overlay`` is gone (this one ends
    next). Needs the account key: an instance's own key reads only that instance."""
    found = _http("GET", "%s/api/v0/overlay/" % base, auth, answer=True) or []
    mine = [o for o in found if isinstance(o, dict) and o.get("name") == overlay]
    if not mine:
        return False
    for iid in mine[0].get("instances") or []:
        if str(iid) == str(pod_id):
            continue
        inst = (_http("GET", "%s/api/v0/instances/%s/" % (base, iid), auth, answer=True) or {}).get("instances")
        if isinstance(inst, list):
            inst = inst[0] if inst else None
        if inst and (inst.get("actual_status") or inst.get("cur_state")) not in ("destroyed", "deleted"):
            return False
    return True


def api_act(cfg, action, credential, kind="pod"):
    """Stop or destroy this pod through the provider's API with ``credential`` (id, key;
    ``kind``: ``pod`` for the provider's pod-scoped one, ``account``). On Vast, the last
    instance of its overlay (``cfg["overlay"]``) deletes the overlay first, when the
    account key allows it; otherwise the client's next ``pod-status`` does."""
    provider = cfg["provider"]
    base = (cfg.get("api_base") or DEFAULT_BASES.get(provider, "")).rstrip("/")
    pod_id, key = credential
    if provider == "runpod":
        auth = {"Authorization": "Bearer " + key}
        if action == "stop":
            return _http("POST", "%s/v2/pods/%s/action" % (base, pod_id), auth, {"action": "stop"})
        return _http("DELETE", "%s/v2/pods/%s" % (base, pod_id), auth)
    if provider == "vastai":
        auth = {"Authorization": "Bearer " + key}
        if action == "stop":
            return _http("PUT", "%s/api/v0/instances/%s/" % (base, pod_id), auth, {"state": "stopped"})
        overlay = cfg.get("overlay")
        if overlay and kind == "account":  # before this instance (and this process) ends
            try:
                if _last_of_overlay(base, auth, overlay, pod_id):
                    _http("DELETE", "%s/api/v0/overlay/" % base, auth, {"overlay_name": overlay})
                    log("autostop: deleted overlay %s (its other instances are gone)" % overlay)
            except Exception as exc:  # noqa: BLE001 - the overlay is the client's to delete then
                log("autostop: overlay %s not deleted (%s); the next 'wf pod-status' deletes it" % (overlay, exc))
        return _http("DELETE", "%s/api/v0/instances/%s/" % (base, pod_id), auth)
    if provider == "lium" and action == "destroy":
        return _http("DELETE", "%s/pods/%s" % (base, pod_id), {"X-API-KEY": key})
    raise AgentError("input", "%s cannot %s a pod from inside it" % (provider, action))


# ---------------------------------------------------------------- the watchdog


class Watchdog(object):
    """One pod's watchdog; ``cfg`` is the request ``autostop.start`` was given."""

    def __init__(self, cfg, clock=time.time):
        self.cfg = cfg
        self.clock = clock
        self.outputs = expand(cfg["outputs_dir"])
        self.ctl = _ctl(self.outputs)
        self.activity = Activity(self.outputs)
        self.started = clock()
        self.idle_since = self.started
        self.last_state = None
        self.last_written = None
        self.notifier = Notifier(self.ctl, cfg.get("notify_urls"), cfg.get("notify_on"),
                                 [sys.executable, os.path.join(self.ctl, NOTIFY_VENV, "bin", "python")]
                                 + list(cfg.get("notify_pythons") or []))

    def credential(self):
        found = pod_credential(self.cfg.get("provider"))
        if found:
            return found, "pod"
        if self.cfg.get("account_key") and self.cfg.get("pod_id"):
            return (str(self.cfg["pod_id"]), self.cfg["account_key"]), "account"
        return None, None

    def spent(self, now):
        """The pool's spend: the ledger's total at ``at`` plus the running pods' price since."""
        b = self.cfg.get("budget") or {}
        since = float(b.get("at") or self.started)
        return float(b.get("spent_usd") or 0.0) + float(b.get("rate_per_hour") or 0.0) * max(0.0, now - since) / 3600.0

    def _title(self, what):
        return "[%s] %s on pod %s" % (self.cfg.get("project") or "podflow", what, self.cfg.get("pod_name") or "p0")

    def announce(self):
        """Notifications for what changed since the last poll: a run that failed, a
        sweep that completed (``notify.on``)."""
        changes, self.activity.changes = self.activity.changes, []
        for name, before, now in changes:
            if name == os.path.join("_control", "sweep", "runner") and now == procs.SUCCESS:
                counts = self._counts()
                self.notifier.emit("sweep_completed", self._title("sweep completed"),
                                   "counts: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
            elif not name.startswith("_") and now in (procs.FAILED, procs.TIMED_OUT, procs.LOST):
                d = os.path.join(self.outputs, name)
                doc = procs.read_status(d) or {}
                self.notifier.emit("run_failed", self._title("run %s %s" % (name, now)),
                                   "run %s: %s (exit code %s)\n--- log tail ---\n%s" % (
                                       name, now, doc.get("exit_code"), procs.tail(d, 20)))

    def _counts(self):
        from .sweepdirs import control_dir, read_plan

        counts = {}
        for r in (read_plan(control_dir(self.outputs)) or {}).get("runs") or []:
            d = r.get("out_dir") or os.path.join(self.outputs, r.get("run_id") or "")
            doc = procs.read_status(d) if os.path.isfile(procs.status_path(d)) else {}
            state = (doc or {}).get("state") or "pending"
            counts[state] = counts.get(state, 0) + 1
        return counts

    def decide(self, now):
        """(why it acts or None, the state document for ``pod-status``)."""
        busy = self.activity.busy()
        self.announce()
        gpus = None
        threshold = float(self.cfg.get("gpu_util_below", 5))
        if not busy:
            gpus = gpu_utils()
            hot = [i for i, u in enumerate(gpus or []) if u >= threshold]
            if hot:
                busy = ["gpu %s at or over %g%%" % (",".join(map(str, hot)), threshold)]
        if busy:
            self.idle_since = now
        idle_secs = self.cfg.get("idle_secs")
        ttl_at = self.cfg.get("ttl_at")
        budget = (self.cfg.get("budget") or {}).get("max_usd")
        spent = self.spent(now) if budget else None
        acts_at = [t for t in ((self.idle_since + idle_secs) if idle_secs else None, ttl_at) if t]
        state = {"pid": os.getpid(), "started_at": self.started, "checked_at": now, "busy": busy,
                 "gpus": gpus, "idle_since": None if busy else self.idle_since, "idle_secs": idle_secs,
                 "ttl_at": ttl_at, "max_cost_usd": budget, "spent_usd": spent, "action": self.cfg.get("action"),
                 "acts_at": min(acts_at) if acts_at else None}
        why = None
        if budget and spent >= budget:
            b = self.cfg.get("budget") or {}
            why = "budget: the pool (%s running pod(s) at $%.4f/h) spent $%.4f of pod.max_cost_usd $%.4f" % (
                b.get("pods_running", "?"), float(b.get("rate_per_hour") or 0.0), spent, budget)
        elif ttl_at and now >= ttl_at:
            why = "ttl: the pod reached pod.ttl"
        elif idle_secs and not busy and now - self.idle_since >= idle_secs:
            why = "idle: no running task or run%s for %.0f s" % (
                " and every GPU under %g%%" % threshold if gpus else "", now - self.idle_since)
        state["not_yet"] = None if why else self._not_yet(busy, idle_secs, ttl_at, budget)
        return why, state

    @staticmethod
    def _not_yet(busy, idle_secs, ttl_at, budget):
        if busy:
            return "busy: " + ", ".join(busy[:5]) + (" and %d more" % (len(busy) - 5) if len(busy) > 5 else "")
        if idle_secs:
            return "idle, but for less than autostop.idle_minutes"
        return "waiting for %s" % " or ".join(w for w, on in (("pod.ttl", ttl_at), ("pod.max_cost_usd", budget)) if on)

    def _write_state(self, state):
        slim = {k: v for k, v in state.items() if k not in ("checked_at", "spent_usd")}
        if slim != self.last_state or state["checked_at"] - (self.last_written or 0) >= 60:
            write_json_atomic(os.path.join(self.ctl, STATE), dict(state, updated_at=utcnow()))
            self.last_state, self.last_written = slim, state["checked_at"]

    def act(self, why):
        """Write the decision, then carry it out. Returns True when done (the watchdog ends)."""
        action = self.cfg.get("action") or "stop"
        unfetched = unfetched_runs(self.outputs) if action == "destroy" else []
        if action == "destroy" and unfetched:
            action = "stop"
            why += "; stop instead of destroy: %d run(s) never fetched (%s)" % (
                len(unfetched), ", ".join(unfetched[:5]))
        decision = {"action": action, "reason": why, "at": utcnow(), "provider": self.cfg.get("provider"),
                    "pod": self.cfg.get("pod_name")}
        event = "budget" if why.startswith("budget") else "autostop"
        self.notifier.emit(event, self._title("autostop: %s" % action), why)
        self.notifier.drain(30)  # before the pod (and its network) goes away
        if action == "command":
            write_json_atomic(os.path.join(self.ctl, DECISION), decision)
            log("autostop: %s: running autostop.command" % why)
            code = subprocess.call(["sh", "-c", self.cfg.get("command") or "true"], stdin=subprocess.DEVNULL)
            log("autostop.command exited %s" % code)
            return True
        credential, kind = self.credential()
        if credential is None:
            decision.update(action="none", error="no credential for the %s API on this pod (the provider injects "
                            "none here; autostop.allow_account_key sends the account key)" % self.cfg.get("provider"))
            write_json_atomic(os.path.join(self.ctl, DECISION), decision)
            log("autostop: %s; %s" % (why, decision["error"]))
            return True
        if self.cfg.get("provider") == "lium" and action == "stop":
            decision.update(action="none", error="Lium pods cannot be stopped, and runs are not all fetched")
            write_json_atomic(os.path.join(self.ctl, DECISION), decision)
            return True
        decision["credential"] = kind
        write_json_atomic(os.path.join(self.ctl, DECISION), decision)
        log("autostop: %s: %s through the %s API (%s credential)" % (why, action, self.cfg.get("provider"), kind))
        for attempt in range(5):
            try:
                api_act(self.cfg, action, credential, kind)
                return True
            except Exception as exc:  # noqa: BLE001 - an API or network failure: retry, bounded
                log("autostop: %s failed (attempt %d): %s" % (action, attempt + 1, exc))
                time.sleep(min(30.0, 2.0 ** attempt))
        decision["error"] = "the %s API call failed 5 times; see _control/autostop.log" % action
        write_json_atomic(os.path.join(self.ctl, DECISION), decision)
        return True

    def poll_secs(self):
        shortest = min([s for s in (self.cfg.get("idle_secs"), 30.0) if s])
        return max(0.2, min(5.0, shortest / 6.0))

    def run(self):
        while os.path.isdir(self.outputs):
            try:
                now = self.clock()
                why, state = self.decide(now)
                self._write_state(state)
                if why and self.act(why):
                    return 0
            except Exception:  # noqa: BLE001 - one bad poll must not end the watchdog
                import traceback

                log("autostop: poll failed:\n" + traceback.format_exc())
            time.sleep(self.poll_secs())
        return 0


# ---------------------------------------------------------------- ops


def _start_time(pid):
    """When the process started (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
        return raw[raw.rfind(")") + 2:].split()[19]
    except (IOError, OSError, IndexError):
        return None


def owner_pid(ctl):
    """The pid of the live watchdog of these outputs, or None. The pid file holds the
    watchdog's pid and start time: a reused pid is not taken for it (its command line
    proves nothing: a long-lived agent forks it)."""
    try:
        with open(os.path.join(ctl, PIDFILE)) as fh:
            pid, started = (fh.read().split() + [None])[:2]
        pid = int(pid)
    except (IOError, OSError, ValueError):
        return None
    if started is None:  # written by an earlier podflow: its watchdog was a one-shot agent's fork
        return pid if pid and OP.encode() in (procs.proc_cmdline(pid) or b"") else None
    return pid if pid and _start_time(pid) == started else None


def _daemon(cfg, ctl):
    os.setsid()
    fd = os.open(os.path.join(ctl, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    import fcntl

    lock = open(os.path.join(ctl, LOCK), "a+")
    deadline = time.time() + 15
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except (IOError, OSError):
            if time.time() > deadline:
                log("autostop: another watchdog holds the lock; leaving")
                return
            time.sleep(0.05)
    write_json_atomic(os.path.join(ctl, STATE), {"pid": os.getpid(), "started_at": time.time(), "updated_at": utcnow(),
                                                 "action": cfg.get("action"), "starting": True})
    with open(os.path.join(ctl, PIDFILE) + ".tmp", "w") as fh:
        fh.write("%d %s" % (os.getpid(), _start_time(os.getpid())))
    os.replace(os.path.join(ctl, PIDFILE) + ".tmp", os.path.join(ctl, PIDFILE))
    log("autostop: watchdog %d started (action %s)" % (os.getpid(), cfg.get("action")))
    Watchdog(cfg).run()


def start(request):
    """Replace this pod's watchdog by one with these settings; returns its pid."""
    ctl = _ctl(request["outputs_dir"])
    os.makedirs(ctl, exist_ok=True)
    stop(request)  # the new one waits for the old one's lock
    try:
        os.unlink(os.path.join(ctl, DECISION))  # a decision of the old settings
    except OSError:
        pass
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _daemon(request, ctl)
        except BaseException:  # noqa: BLE001 - say why in the log (stderr is the log by now)
            import traceback

            log("autostop: the watchdog ended:\n" + traceback.format_exc())
        finally:
            os._exit(0)
    deadline = time.time() + 10
    while time.time() < deadline and owner_pid(ctl) != pid:
        time.sleep(0.02)
    return {"pid": pid, "running": owner_pid(ctl) == pid}


def status(request):
    """What the watchdog sees now, and what it decided (for ``pod-status``)."""
    ctl = _ctl(request["outputs_dir"])
    try:
        state = read_json(os.path.join(ctl, STATE), default=None, what="autostop state")
        decision = read_json(os.path.join(ctl, DECISION), default=None, what="autostop decision")
    except AgentError:
        state, decision = None, None
    return {"running": owner_pid(ctl) is not None, "state": state, "decision": decision}


def stop(request):
    """End this pod's watchdog (autostop switched off)."""
    ctl = _ctl(request["outputs_dir"])
    pid = owner_pid(ctl)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    return {"stopped": pid}


OPS = {OP: start, "autostop.status": status, "autostop.stop": stop, "autostop.mark_fetched": mark_fetched}
