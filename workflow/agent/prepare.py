"""bootstrap and checkout on the pod: the work behind ``wf bootstrap`` and ``wf checkout``.

The engine (``workflow.prepare``) builds a non-secret spec from the config and calls
``prepare.start``: the spec is written to ``_control/specs/<task_id>.json`` and a
tracked task (``tasks.run``) runs ``podagent bootstrap-run SPEC`` or ``checkout-run
SPEC``. That command prints its progress (lines starting with ``MILESTONE`` are the
milestones; everything else is detail, e.g. git's own output), writes ``result.json``
into its task dir, and — only when every step succeeded — moves the state machine
itself with a compare-and-set (``state.transition`` expecting the state the engine
saw). So a detached run and an attached one end the same way, and a failure never
moves the state.

Secrets never pass through here: the spec holds config values only; anything secret
reaches the task through its environment (the FIFO of ``procs.launch``).
"""

import collections
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager

from . import procs, state, tasks
from .fsutil import expand, makedirs, read_json, utcnow, write_atomic, write_json_atomic
from .protocol import AgentError

#: Lines of the task log that are milestones (``workflow.progress.MILESTONE_PREFIX``).
MILESTONE = "==> "
RESULT_FILE = "result.json"
BOOTSTRAP_MARKER = "bootstrap.json"
SETUP_LOG = "setup.log"
VENV_NAME = ".venv"
PARENT_PTH = "_podflow_parent_venv.pth"
VENV_META = ".podflow-venv.json"
TAIL_LINES = 30
_PAYLOAD = "@@PODFLOW-JSON@@"

KINDS = {"bootstrap": "bootstrap-run", "checkout": "checkout-run"}

#: command -> the apt package that provides it (when bootstrap.apt_packages has no better one).
TOOLS = (("git", "git"), ("tmux", "tmux"), ("rsync", "rsync"))


class StepFailed(Exception):
    """A step failed: what failed, why, what to do, and the output that shows it."""

    def __init__(self, message, hint=None, tail=None):
        Exception.__init__(self, message)
        self.message, self.hint, self.tail = message, hint, tail


def _mask_url(url):
    """``https://user:token@host/x`` -> ``https://***@host/x`` for printing."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", url or "")


# ---------------------------------------------------------------- the runner


class Runner:
    """Prints progress, runs commands with their output streamed to the task log, and
    records each step for ``result.json``."""

    def __init__(self, spec, out=None):
        self.spec = spec
        self.out = out or sys.stdout
        self.steps = []
        self.current = None
        self.notes = []

    def say(self, text):
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    def milestone(self, text):
        self.say(MILESTONE + text)

    @contextmanager
    def step(self, name, text):
        self.current = name
        self.milestone("%s: %s" % (name, text))
        t0 = time.monotonic()
        entry = {"name": name, "ok": False}
        self.steps.append(entry)
        yield entry
        entry["ok"] = True
        entry["secs"] = round(time.monotonic() - t0, 3)

    def run(self, argv, cwd=None, env=None, show=True, capture=False, check=True, what=None, hint=None):
        """Run ``argv`` (no shell); its output goes to the log as it comes (``show``).
        Returns ``(exit_code, output)``; a non-zero exit raises StepFailed when ``check``."""
        if show:
            self.say("$ " + " ".join(shlex.quote(_mask_url(a)) for a in argv))
        full_env = dict(os.environ)
        full_env.update(env or {})
        tail = collections.deque(maxlen=TAIL_LINES)
        chunks = []
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            if check:
                raise StepFailed("%s: cannot run %s: %s" % (what or argv[0], argv[0], exc.strerror), hint=hint)
            return 127, ""
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            tail.append(line.rstrip("\n"))
            if capture:
                chunks.append(line)
            if show:
                self.out.write(line if line.endswith("\n") else line + "\n")
                self.out.flush()
        proc.stdout.close()
        code = proc.wait()
        code = 128 - code if code < 0 else code
        if code != 0 and check:
            raise StepFailed("%s failed (exit %d)" % (what or " ".join(argv[:2]), code), hint=hint,
                             tail="\n".join(tail))
        return code, "".join(chunks)

    def quiet(self, argv, cwd=None, env=None):
        """``(exit_code, stdout, stderr)`` of a small command, not shown in the log."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            res = subprocess.run(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            return 127, "", str(exc)
        return res.returncode, res.stdout.decode("utf-8", "replace"), res.stderr.decode("utf-8", "replace")


def _control_dir(spec):
    return os.path.join(expand(spec["outputs_dir"]), "_control")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _transition(spec, fields):
    fsm = spec.get("fsm") or {}
    request = {
        "outputs_dir": spec["outputs_dir"],
        "state_file": spec.get("state_file"),
        "to": fsm["to"],
        "trigger": fsm["trigger"],
        "expect": fsm.get("expect"),
        "enforce": fsm.get("enforce", True),
        "by": fsm.get("by"),
        "set": fields,
    }
    return state.transition(request)


def _main(argv, kind, work):
    if len(argv) != 1:
        sys.stderr.write("usage: podagent %s SPEC.json\n" % KINDS[kind])
        return 2
    spec = read_json(argv[0], what="spec file")
    if spec is None:
        sys.stderr.write("%s: no spec file %s\n" % (KINDS[kind], argv[0]))
        return 2
    task_dir = os.environ.get("WF_TASK_DIR") or spec.get("task_dir")
    r = Runner(spec)
    t0 = time.monotonic()
    result = {"kind": kind, "task_id": spec.get("task_id"), "started_at": utcnow()}
    code = 1
    try:
        fields = work(r, result) or {}
        r.current = "state"
        doc = _transition(spec, fields)
        if doc.get("warning"):
            r.say("warning: " + doc["warning"])
            result["warning"] = doc["warning"]
        result.update(ok=True, state=doc["state"], fields=fields)
        r.milestone("%s: done, state %s" % (kind, doc["state"]))
        code = 0
    except StepFailed as exc:
        result.update(ok=False, step=r.current, message=exc.message, hint=exc.hint, tail=exc.tail)
        if exc.tail:
            r.say("--- last output of the failing command ---\n" + exc.tail)
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, exc.message))
        if exc.hint:
            r.say("hint: " + exc.hint)
    except AgentError as exc:
        result.update(ok=False, step=r.current, error_kind=exc.kind, message=exc.message, **exc.extra)
        if exc.kind == "refused":
            result["message"] = "the state changed while %s ran (%s); nothing was recorded" % (kind, exc.message)
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    except OSError as exc:  # the pod's file system said no: disk full, permissions, read-only
        where = ": %s" % exc.filename if exc.filename else ""
        result.update(ok=False, step=r.current, error_kind="os",
                      message="%s%s" % (exc.strerror or exc, where))
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    except Exception as exc:  # noqa: BLE001 - recorded, never lost
        result.update(ok=False, step=r.current, error_kind="internal",
                      message="%s: %s" % (type(exc).__name__, exc), tail=traceback.format_exc()[-3000:])
        r.say(traceback.format_exc())
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    result.update(steps=r.steps, notes=r.notes, finished_at=utcnow(),
                  duration_secs=round(time.monotonic() - t0, 3))
    if task_dir:
        write_json_atomic(os.path.join(task_dir, RESULT_FILE), result)
    return code


# ---------------------------------------------------------------- bootstrap


def _python_path(name):
    path = expand(name) if os.sep in name else shutil.which(name)
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def _check_venv(r, python):
    """Really make a venv (no pip: fast) and check ensurepip is there for a full one."""
    tmp = tempfile.mkdtemp(prefix="podflow-venv-check-")
    try:
        target = os.path.join(tmp, "v")
        code, out, err = r.quiet([python, "-m", "venv", "--without-pip", target])
        if code != 0:
            return (err or out).strip().splitlines()[-1:] or ["python -m venv failed"]
        code, out, err = r.quiet([os.path.join(target, "bin", "python"), "-c", "import ensurepip"])
        if code != 0:
            return ["ensurepip is not available (%s)" % ((err or out).strip().splitlines() or ["?"])[-1]]
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _venv_package(r, python, apt_packages):
    code, out, _ = r.quiet([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    exact = "python%s-venv" % out.strip() if code == 0 and out.strip() else None
    for pkg in apt_packages:
        if pkg in ("python3-venv", exact):
            return pkg
    return exact or "python3-venv"


def _dpkg_installed(r, pkg):
    """True / False, or None when this pod has no dpkg to ask."""
    if not shutil.which("dpkg-query"):
        return None
    code, out, _ = r.quiet(["dpkg-query", "-W", "-f=${Status}", pkg])
    return code == 0 and out.strip().endswith("install ok installed")


def _find_missing(r, spec):
    """``[(what, why, apt package)]`` of every missing prerequisite."""
    missing = []
    apt_packages = list(spec.get("apt_packages") or [])
    for tool, pkg in TOOLS:
        found = shutil.which(tool)
        r.say("  %-8s %s" % (tool, found or "MISSING"))
        if not found:
            missing.append((tool, "command not found on PATH", pkg))
    python_name = spec.get("python") or "python3"
    python = _python_path(python_name)
    if not python:
        r.say("  %-8s MISSING (%s)" % ("python", python_name))
        missing.append((python_name, "not found on the pod (remote.python)", "python3"))
    else:
        problem = _check_venv(r, python)
        r.say("  %-8s %s: venv %s" % ("python", python, "ok" if not problem else "FAILS: " + problem[0]))
        if problem:
            missing.append(("%s -m venv" % python_name, problem[0], _venv_package(r, python, apt_packages)))
    known = set(pkg for _, pkg in TOOLS) | set(p for _, _, p in missing) | {"python3-venv"}
    for pkg in apt_packages:
        if pkg in known or re.match(r"^python3\.\d+-venv$", pkg):
            continue
        installed = _dpkg_installed(r, pkg)
        r.say("  %-8s %s" % (pkg, {True: "installed", False: "NOT INSTALLED", None: "(no dpkg: not checked)"}[installed]))
        if installed is False:
            missing.append(("package %s" % pkg, "not installed (dpkg)", pkg))
    return missing


def _apt_install(r, packages):
    apt = shutil.which("apt-get")
    if not apt:
        raise StepFailed("missing: %s, and this pod has no apt-get to install them" % ", ".join(packages),
                         hint="install them with the pod's package manager, or use an image that has them")
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which("sudo") and r.quiet(["sudo", "-n", "true"])[0] == 0:
        prefix = ["sudo", "-n"]
    else:
        raise StepFailed("bootstrap.install_prereqs needs root or passwordless sudo to install: %s"
                         % ", ".join(packages),
                         hint="as root on the pod run: apt-get install -y %s" % " ".join(packages))
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = prefix + [apt, "install", "-y", "--no-install-recommends"] + list(packages)
    code, _ = r.run(install, env=env, check=False)
    if code != 0:
        r.say("apt-get install failed; updating the package lists and trying once more")
        r.run(prefix + [apt, "update"], env=env, what="apt-get update")
        r.run(install, env=env, what="apt-get install %s" % " ".join(packages),
              hint="check the package names in bootstrap.apt_packages")


def _run_script(r, path, log_name, what):
    """``bash PATH`` with its output in the task log and in ``_control/<log_name>``."""
    log_path = os.path.join(_control_dir(r.spec), log_name)
    makedirs(os.path.dirname(log_path))
    r.say("$ bash " + shlex.quote(path) + "   (log: %s)" % log_path)
    tail = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", path], cwd=procs.user_home(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for raw in iter(proc.stdout.readline, b""):
            log.write(raw)
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            r.say(line)
        proc.stdout.close()
        code = proc.wait()
    if code != 0:
        code = 128 - code if code < 0 else code
        raise StepFailed("%s %s failed (exit %d)" % (what, path, code), tail="\n".join(tail),
                         hint="its whole log is %s on the pod" % log_path)


def _maybe_script(r, key, path, prev, marker, what, log_name):
    """Run the script at ``path`` unless this same file (path + SHA-256) already ran."""
    full = expand(path)
    if not os.path.isfile(full):
        raise StepFailed("%s %s does not exist on the pod" % (what, full),
                         hint="%s is a path on the pod (e.g. on its persistent volume)" % key)
    digest = _sha256(full)
    if prev.get(key) == full and prev.get(key + "_sha256") == digest:
        r.say("%s %s already ran at %s and is unchanged: not run again" % (what, full, prev.get(key + "_at")))
        marker[key], marker[key + "_sha256"], marker[key + "_at"] = full, digest, prev.get(key + "_at")
        return False
    _run_script(r, full, log_name, what)
    marker[key], marker[key + "_sha256"], marker[key + "_at"] = full, digest, utcnow()
    return True


def _first_line(r, argv):
    code, out, err = r.quiet(argv)
    text = (out or err).strip().splitlines()
    return text[0] if code == 0 and text else "not available"


def _user_name():
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER") or "?"


def _write_setup_log(r, spec, python):
    lines = ["podflow setup log", "date: %s" % utcnow(), "host: %s" % socket.gethostname(),
             "user: %s (uid %d)" % (_user_name(), os.getuid())]
    pretty = "?"
    try:
        with open("/etc/os-release") as fh:
            for ln in fh:
                if ln.startswith("PRETTY_NAME="):
                    pretty = ln.split("=", 1)[1].strip().strip('"')
    except (IOError, OSError):
        pass
    lines += ["os: %s" % pretty, "kernel: %s" % os.uname().release,
              "git: %s" % _first_line(r, ["git", "--version"]),
              "tmux: %s" % _first_line(r, ["tmux", "-V"]),
              "rsync: %s" % _first_line(r, ["rsync", "--version"]),
              "podagent python: %s (%s)" % (sys.executable, sys.version.split()[0])]
    if python:
        lines.append("remote.python: %s (%s)" % (python, _first_line(r, [python, "--version"])))
        code, out, err = r.quiet([python, "-m", "pip", "freeze"])
        lines.append("--- pip freeze (%s) ---" % python)
        lines.append(out.rstrip() if code == 0 else "pip not available: %s" % (err.strip().splitlines() or ["?"])[-1])
    lines.append("--- nvidia-smi ---")
    if shutil.which("nvidia-smi"):
        code, out, err = r.quiet(["nvidia-smi"])
        lines.append(out.rstrip() if code == 0 else "no GPU (nvidia-smi failed: %s)" % (err.strip() or code))
    else:
        lines.append("no GPU (nvidia-smi not found)")
    path = os.path.join(_control_dir(spec), SETUP_LOG)
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def do_bootstrap(r, result):
    spec = r.spec
    control = _control_dir(spec)
    marker_path = os.path.join(control, BOOTSTRAP_MARKER)
    prev = read_json(marker_path, default=None, what="bootstrap record") or {}
    marker = {"task_id": spec.get("task_id")}
    installed = []
    with r.step("prereqs", "checking git, tmux, rsync, python with venv"):
        missing = _find_missing(r, spec)
        if missing and spec.get("install_prereqs"):
            pkgs = []
            for _, _, pkg in missing:
                if pkg not in pkgs:
                    pkgs.append(pkg)
            r.milestone("prereqs: installing %s" % ", ".join(pkgs))
            _apt_install(r, pkgs)
            installed = pkgs
            missing = _find_missing(r, spec)
        if missing:
            names = "; ".join("%s (%s)" % (what, why) for what, why, _ in missing)
            pkgs = " ".join(sorted(set(p for _, _, p in missing)))
            raise StepFailed("missing on the pod: %s" % names,
                             hint="set bootstrap.install_prereqs: true (installs with apt as root or with sudo -n), "
                                  "or install them yourself: apt-get install -y %s" % pkgs)
    ran = []
    script = spec.get("script")
    if script:
        with r.step("script", "bootstrap.script %s" % script):
            if _maybe_script(r, "script", script, prev, marker, "bootstrap.script", "bootstrap-script.log"):
                ran.append("script")
    wandb = spec.get("wandb_setup_script")
    if spec.get("wandb_enabled"):
        if wandb:
            with r.step("wandb", "bootstrap.wandb_setup_script %s" % wandb):
                if _maybe_script(r, "wandb_setup_script", wandb, prev, marker, "bootstrap.wandb_setup_script",
                                 "wandb-setup.log"):
                    ran.append("wandb_setup_script")
        else:
            r.say("sweep.wandb.enabled but no bootstrap.wandb_setup_script: runs need WANDB_API_KEY or ~/.netrc")
    elif wandb:
        r.say("not running bootstrap.wandb_setup_script: sweep.wandb.enabled is false")
    python = _python_path(spec.get("python") or "python3")
    setup_log = os.path.join(control, SETUP_LOG)
    already = bool(prev) and not installed and not ran and os.path.isfile(setup_log)
    with r.step("setup-log", setup_log):
        if already:
            r.say("setup log kept (written at %s): nothing was installed or run" % prev.get("done_at"))
        else:
            _write_setup_log(r, spec, python)
            r.say("wrote %s" % setup_log)
    marker["done_at"] = prev.get("done_at") if already else utcnow()
    marker["checked_at"] = utcnow()
    marker["installed"] = installed
    write_json_atomic(marker_path, marker)
    if already:
        r.milestone("bootstrap: already done at %s; only checked (prerequisites present, nothing run again)"
                    % prev.get("done_at"))
    result.update(already=already, installed=installed, ran=ran, setup_log=setup_log)
    return {"bootstrapped_at": marker["done_at"]}


# ---------------------------------------------------------------- checkout


def _norm_remote(url):
    url = (url or "").strip()
    if "://" not in url and not re.match(r"^[^/]+@[^/:]+:", url) and not re.match(r"^[^/:]+:[^/]", url):
        url = os.path.realpath(expand(url))
    url = url.rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    return url.rstrip("/")


class Git:
    def __init__(self, r, workdir):
        self.r, self.workdir = r, workdir
        self.env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"}

    def run(self, *args, **kw):
        return self.r.run(["git", "-C", self.workdir] + list(args), env=self.env, **kw)

    def out(self, *args):
        """stdout of a quiet git command, or None when it fails."""
        code, out, _ = self.r.quiet(["git", "-C", self.workdir] + list(args), env=self.env)
        return out if code == 0 else None

    def sha(self, ref):
        out = self.out("rev-parse", "--verify", "--quiet", ref + "^{commit}")
        return out.strip() if out else None


def _dirty(git):
    """``(tracked changes, untracked files)`` as porcelain paths."""
    out = git.out("status", "--porcelain=v1", "-z", "--untracked-files=normal") or ""
    tracked, untracked = [], []
    items = out.split("\0")
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if not item:
            continue
        code, path = item[:2], item[3:]
        if code == "??":
            untracked.append(path)
        else:
            tracked.append("%s %s" % (code.strip(), path))
            if code[0] in "RC":
                i += 1  # the rename's source path
    return tracked, untracked


def _sync_repo(r, git, spec):
    workdir, url = git.workdir, spec["repo_url"]
    fresh = False
    if os.path.isdir(os.path.join(workdir, ".git")):
        origin = (git.out("remote", "get-url", "origin") or "").strip()
        if not origin:
            raise StepFailed("%s is a git checkout without an 'origin' remote" % workdir,
                             hint="remove it or point remote.workdir elsewhere")
        if _norm_remote(origin) != _norm_remote(url):
            raise StepFailed("%s is a clone of %s, not of checkout.repo_url %s"
                             % (workdir, _mask_url(origin), _mask_url(url)),
                             hint="point remote.workdir elsewhere, or remove that checkout on the pod")
        git.run("fetch", "--prune", "--tags", "origin", what="git fetch",
                hint="check checkout.repo_url and that the pod can reach it")
    else:
        if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
            raise StepFailed("remote.workdir %s exists and is not a git checkout" % workdir,
                             hint="point remote.workdir at an empty or new directory")
        makedirs(os.path.dirname(workdir.rstrip("/")) or "/")
        r.run(["git", "clone", "--no-checkout", url, workdir], env=git.env, what="git clone",
              hint="check checkout.repo_url and that the pod can reach it (credentials come from the pod's git setup)")
        fresh = True
    _exclude_venv(workdir)
    return fresh


def _exclude_venv(workdir):
    """The checkout's venv is no local change: list it in ``.git/info/exclude``."""
    exclude = os.path.join(workdir, ".git", "info", "exclude")
    line = "/%s/" % VENV_NAME
    try:
        with open(exclude) as fh:
            if line in fh.read().split("\n"):
                return
    except (IOError, OSError):
        makedirs(os.path.dirname(exclude))
    with open(exclude, "a") as fh:
        fh.write("\n# podflow: the checkout's venv\n%s\n" % line)


def _target(r, git, spec):
    """``(sha, local branch name, description)`` of what to check out."""
    pr, branch = spec.get("pr"), spec.get("branch")
    if pr:
        ref = "refs/remotes/origin/pr/%d" % int(pr)
        git.run("fetch", "origin", "+refs/pull/%d/head:%s" % (int(pr), ref), what="git fetch of PR %d" % int(pr),
                hint="the remote must publish pull/%d/head (GitHub does; so do Gitea and Forgejo)" % int(pr))
        return git.sha(ref), "pr-%d" % int(pr), "PR %d" % int(pr)
    if not branch:
        head = (git.out("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD") or "").strip()
        if not head:
            git.run("remote", "set-head", "origin", "--auto", what="git remote set-head", show=False)
            head = (git.out("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD") or "").strip()
        if not head:
            raise StepFailed("cannot tell the default branch of %s" % _mask_url(spec["repo_url"]),
                             hint="set checkout.branch")
        branch = head[len("refs/remotes/origin/"):]
        desc = "default branch %s" % branch
    else:
        desc = "branch %s" % branch
    sha = git.sha("refs/remotes/origin/" + branch)
    if not sha:
        names = (git.out("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/") or "").split()
        names = [n for n in names if n != "HEAD" and not n.startswith("pr/")]
        raise StepFailed("branch %r is not on the remote %s" % (branch, _mask_url(spec["repo_url"])),
                         hint="branches there: %s" % (", ".join(names[:20]) or "none"))
    return sha, branch, desc


def _pinned(r, git, pinned, desc):
    """The commit a pool's checkout resolved once (SPEC §8): every pod checks out that SHA,
    even when the branch moved on since; fetched by id when this clone lacks it."""
    r.say("the pool checks out %s (resolved once for every pod); %s moved on" % (pinned, desc))
    if not git.sha(pinned):
        git.run("fetch", "origin", pinned, what="git fetch of %s" % pinned[:12],
                hint="the remote must serve that commit (it was the branch's head when the pool's checkout began)")
    sha = git.sha(pinned)
    if sha != pinned:
        raise StepFailed("commit %s is not in %s" % (pinned, _mask_url(git.r.spec["repo_url"])))
    return sha


def _checkout_tree(r, git, spec, sha, local, fresh):
    """Check out ``sha`` as branch ``local``; refuse to lose local work unless force_clean."""
    discarded = []
    if fresh:
        git.run("checkout", "-q", "-f", "-B", local, sha, what="git checkout")
        return discarded
    tracked, untracked = _dirty(git)
    in_target = set((git.out("ls-tree", "-r", "-z", "--name-only", sha) or "").split("\0"))
    # An untracked directory is listed once ("dir/"): it is in the way when the target has files under it.
    clobbered = [p for p in untracked
                 if p in in_target or (p.endswith("/") and any(t.startswith(p) for t in in_target))]
    lost = []
    old = git.sha("refs/heads/" + local)
    head = git.sha("HEAD")
    # Commits the remote does not have would be lost when the branch we reset (-B), or
    # a detached HEAD no other branch holds, moves away from them.
    for name, commit in (("branch " + local, old), ("HEAD", head if head != old else None)):
        if not commit or commit == sha or git.out("merge-base", "--is-ancestor", commit, sha) is not None:
            continue
        if (git.out("branch", "-r", "--contains", commit) or "").strip():
            continue
        holders = (git.out("for-each-ref", "--contains", commit, "--format=%(refname)", "refs/heads/") or "").split()
        if name == "HEAD" and [x for x in holders if x != "refs/heads/" + local]:
            continue
        lost.append("%s at %s has commits not on the remote" % (name, commit[:12]))
    if tracked or clobbered or lost:
        if not spec.get("force_clean"):
            shown = tracked[:10] + ["?? %s (would be overwritten)" % p for p in clobbered[:10]] + lost
            more = len(tracked) + len(clobbered) - len(tracked[:10]) - len(clobbered[:10])
            raise StepFailed("the checkout on the pod has local changes that checkout would discard: %s%s"
                             % ("; ".join(shown), " (and %d more)" % more if more > 0 else ""),
                             hint="commit and push them from the pod, or set checkout.force_clean: true "
                                  "to discard them (git reset --hard + git clean -fdx)")
    if spec.get("force_clean") and (tracked or untracked or lost):
        discarded = tracked + ["?? " + p for p in untracked] + lost
        r.milestone("checkout: force_clean: discarding %d local change(s)" % len(discarded))
        for line in discarded[:50]:
            r.say("  discarded: " + line)
        git.run("reset", "--hard", "-q", what="git reset --hard")
        git.run("clean", "-fdxq", "-e", "/%s/" % VENV_NAME, what="git clean -fdx")
    git.run("checkout", "-q", "-B", local, sha, what="git checkout")
    if untracked and not spec.get("force_clean"):
        r.say("kept %d untracked file(s) checkout does not touch (e.g. %s)" % (len(untracked), untracked[0]))
    return discarded


_PY_INFO = (
    "import json, site, sys, sysconfig\n"
    "print('" + _PAYLOAD + "' + json.dumps({'executable': sys.executable, 'prefix': sys.prefix,\n"
    "  'base_prefix': getattr(sys, 'base_prefix', sys.prefix), 'version': sys.version.split()[0],\n"
    "  'site': site.getsitepackages() if hasattr(site, 'getsitepackages') else [],\n"
    "  'purelib': sysconfig.get_paths()['purelib']}))\n"
)


def _py_info(r, python):
    code, out, err = r.quiet([python, "-c", _PY_INFO])
    for line in reversed(out.splitlines()):
        if line.startswith(_PAYLOAD):
            return json.loads(line[len(_PAYLOAD):])
    raise StepFailed("%s does not run: %s" % (python, (err or out).strip()[-500:] or "exit %d" % code))


def _make_venv(r, spec, workdir):
    venv = os.path.join(workdir, VENV_NAME)
    name = spec.get("python") or "python3"
    python = _python_path(name)
    if not python:
        raise StepFailed("remote.python %s is not on the pod" % name,
                         hint="set remote.python to the python that has torch (e.g. /opt/conda/bin/python)")
    parent = _py_info(r, python)
    vpy = os.path.join(venv, "bin", "python")
    meta_path = os.path.join(venv, VENV_META)
    if os.path.lexists(venv) and spec.get("venv_recreate"):
        r.say("checkout.venv_recreate: removing %s" % venv)
        shutil.rmtree(venv) if os.path.isdir(venv) and not os.path.islink(venv) else os.unlink(venv)
    created = False
    if os.path.isfile(vpy) and r.quiet([vpy, "-c", "pass"])[0] == 0:
        meta = read_json(meta_path, default=None, what="venv record") or {}
        r.say("reusing %s (made from %s)" % (venv, meta.get("python", "?")))
        if meta.get("python") and meta.get("python") != python:
            r.say("warning: remote.python is now %s; set checkout.venv_recreate: true once to rebuild the venv"
                  % python)
    else:
        if os.path.lexists(venv):
            r.say("%s is broken: recreating it" % venv)
            shutil.rmtree(venv, ignore_errors=True)
        r.run([python, "-m", "venv", "--system-site-packages", venv], what="python -m venv",
              hint="run 'wf bootstrap' (it checks python3-venv) or set remote.python")
        created = True
        write_json_atomic(meta_path, {"python": python, "created_at": utcnow(), "parent_prefix": parent["prefix"]})
    # A venv's python as remote.python: --system-site-packages sees only the base
    # python's packages, not that venv's (where torch is). Point at them with a .pth.
    pth_paths = []
    if parent["prefix"] != parent["base_prefix"]:
        prefix = parent["prefix"].rstrip("/") + "/"
        pth_paths = [p for p in parent["site"] if p.startswith(prefix) and os.path.isdir(p)]
    mine = _py_info(r, vpy)
    pth = os.path.join(mine["purelib"], PARENT_PTH)
    if pth_paths:
        write_atomic(pth, "\n".join(pth_paths) + "\n")
        r.say("remote.python is the venv %s: its site-packages are visible through %s" % (parent["prefix"], pth))
    elif os.path.exists(pth):
        os.unlink(pth)
    return venv, python, created


def _venv_env(venv):
    return {"PATH": os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "VIRTUAL_ENV": venv}


_PREFLIGHT = (
    "import json, sys\n"
    "out = {'python': sys.executable}\n"
    "try:\n"
    "    import torch\n"
    "except BaseException as exc:\n"
    "    out['error'] = '%s: %s' % (type(exc).__name__, exc)\n"
    "else:\n"
    "    out['torch'] = torch.__version__\n"
    "    out['file'] = torch.__file__\n"
    "    out['cuda_built'] = getattr(torch.version, 'cuda', None)\n"
    "    try:\n"
    "        out['cuda'] = bool(torch.cuda.is_available())\n"
    "        out['devices'] = torch.cuda.device_count() if out['cuda'] else 0\n"
    "    except BaseException as exc:\n"
    "        out['cuda'] = False\n"
    "        out['cuda_error'] = '%s: %s' % (type(exc).__name__, exc)\n"
    "print('" + _PAYLOAD + "' + json.dumps(out))\n"
)


def wants_cuda(spec):
    """``checkout.require_cuda`` as the client resolved it: true, false, or "if-driver"
    (``auto`` on a host you already have: CUDA only where this host has nvidia-smi, so a
    CPU-only host works as it is)."""
    value = spec.get("require_cuda")
    if value == "if-driver":
        return shutil.which("nvidia-smi") is not None
    return bool(value)


def _preflight(r, spec, venv, python):
    vpy = os.path.join(venv, "bin", "python")
    code, out, err = r.quiet([vpy, "-c", _PREFLIGHT], env=_venv_env(venv))
    info = None
    for line in reversed(out.splitlines()):
        if line.startswith(_PAYLOAD):
            info = json.loads(line[len(_PAYLOAD):])
            break
    if info is None:
        raise StepFailed("the preflight python %s crashed (exit %d)" % (vpy, code), tail=(err or out)[-2000:])
    if "error" in info:
        raise StepFailed("import torch fails in the venv %s (made from remote.python %s): %s"
                         % (vpy, python, info["error"]),
                         hint="the pod image needs torch for remote.python: set remote.python to the python that "
                              "has it (then checkout.venv_recreate: true once), install it with checkout.install, "
                              "or set checkout.require_torch: false")
    r.milestone("preflight: torch %s from %s; CUDA built: %s; cuda available: %s%s"
          % (info["torch"], info["file"], info.get("cuda_built"), info.get("cuda"),
             " (%d GPU)" % info["devices"] if info.get("cuda") else ""))
    if wants_cuda(spec) and not info.get("cuda"):
        why = info.get("cuda_error") or ("this torch is a CPU-only build" if not info.get("cuda_built")
                                         else "no GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
        raise StepFailed("torch %s in %s sees no CUDA GPU: torch.cuda.is_available() is False (%s)"
                         % (info["torch"], vpy, why),
                         hint="on a CPU-only pod set checkout.require_cuda: false; otherwise use an image whose "
                              "python has GPU-enabled torch (remote.python)")
    return info


def _data_path(path, data_dir):
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(expand(data_dir or "."), path)


def _count_files(path, stop):
    if os.path.isfile(path):
        return 1
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
        if n >= stop:
            break
    return n


def _check_data(r, checks, data_dir):
    failures = []
    for check in checks:
        full = _data_path(check["path"], data_dir)
        need = check.get("min_files")
        if not os.path.exists(full):
            failures.append("%s: missing" % full)
            r.say("  %s: MISSING" % full)
            continue
        if need:
            n = _count_files(full, need)
            if n < need:
                failures.append("%s: %d file(s), needs at least %d" % (full, n, need))
                r.say("  %s: %d file(s), needs %d: FAIL" % (full, n, need))
                continue
            r.say("  %s: >= %d file(s): ok" % (full, need))
        else:
            r.say("  %s: present: ok" % full)
    return failures


def _data(r, spec, venv):
    checks = spec.get("data_checks") or []
    data_dir = spec.get("data_dir")
    failures = _check_data(r, checks, data_dir)
    if not failures:
        return {"downloaded": False}
    download = spec.get("data_download")
    if not download:
        raise StepFailed("data checks failed: %s" % "; ".join(failures),
                         hint="put the data there (wf push-data PATH --name NAME), or set data.download to a command "
                              "that fetches it")
    where = expand(data_dir) if data_dir else procs.user_home()
    makedirs(where)
    r.milestone("data: %d check(s) failed; running data.download in %s" % (len(failures), where))
    env = _venv_env(venv)
    env["DATA_DIR"] = where
    r.run(["bash", "-c", download], cwd=where, env=env, what="data.download")
    failures = _check_data(r, checks, data_dir)
    if failures:
        raise StepFailed("data checks still fail after data.download: %s" % "; ".join(failures),
                         hint="check that data.download writes where data.checks look (relative paths are under "
                              "remote.data_dir)")
    return {"downloaded": True}


def do_checkout(r, result):
    spec = r.spec
    workdir = expand(spec["workdir"])
    git = Git(r, workdir)
    with r.step("fetch", "%s -> %s" % (_mask_url(spec["repo_url"]), workdir)):
        fresh = _sync_repo(r, git, spec)
    with r.step("resolve", "which commit"):
        sha, local, desc = _target(r, git, spec)
        r.say("%s is %s" % (desc, sha))
        if spec.get("sha") and spec["sha"] != sha:
            sha = _pinned(r, git, spec["sha"], desc)
        expect = (spec.get("expect_sha") or "").lower()
        if expect and not sha.startswith(expect):
            raise StepFailed("checkout.expect_sha %s does not match %s, which is at %s" % (expect, desc, sha),
                             hint="update checkout.expect_sha, or check out the branch/PR that has it")
    with r.step("checkout", "%s at %s" % (desc, sha[:12])):
        discarded = _checkout_tree(r, git, spec, sha, local, fresh)
        head = git.sha("HEAD")
        if head != sha:
            raise StepFailed("after checkout HEAD is %s, not %s" % (head, sha))
    with r.step("venv", os.path.join(workdir, VENV_NAME)):
        venv, python, created = _make_venv(r, spec, workdir)
    if spec.get("install"):
        with r.step("install", spec["install"]):
            r.run(["bash", "-c", spec["install"]], cwd=workdir, env=_venv_env(venv), what="checkout.install",
                  hint="fix checkout.install (it runs in the checkout with the venv's bin/ first on PATH)")
    torch_info = None
    if spec.get("require_torch") or wants_cuda(spec):
        with r.step("preflight", "import torch%s" % (" and CUDA" if wants_cuda(spec) else "")):
            torch_info = _preflight(r, spec, venv, python)
    data = {"downloaded": False}
    if spec.get("data_checks"):
        with r.step("data", "%d check(s)" % len(spec["data_checks"])):
            data = _data(r, spec, venv)
    result.update(sha=sha, branch=None if spec.get("pr") else local, pr=spec.get("pr"), workdir=workdir,
                  venv=venv, venv_created=created, discarded=discarded, torch=torch_info,
                  data_downloaded=data["downloaded"])
    fields = {
        "checkout_sha": sha,
        "checkout_branch": None if spec.get("pr") else local,
        "checkout_pr": spec.get("pr"),
        "checkout_repo_url": _mask_url(spec["repo_url"]),
        "checkout_workdir": workdir,
        "checkout_venv": venv,
        "checkout_at": utcnow(),
    }
    if discarded:
        fields["checkout_force_cleaned"] = {"at": utcnow(), "discarded": discarded[:50], "count": len(discarded)}
    return fields


def bootstrap_main(argv):
    return _main(argv, "bootstrap", do_bootstrap)


def checkout_main(argv):
    return _main(argv, "checkout", do_checkout)


# ---------------------------------------------------------------- ops


def _active_same_kind(root, kind):
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return None
    for name in sorted(names):
        if not name.startswith(kind + "-") or not procs.ID_RE.match(name):
            continue
        try:
            doc = procs.refresh_status(os.path.join(root, name))
        except AgentError:
            continue
        if doc and doc.get("state") in procs.ACTIVE:
            return name
    return None


def start(request):
    """``{kind, id, spec, env, session, timeout_secs}`` -> the task's status (running).

    Writes the spec to ``_control/specs/<id>.json`` and starts the tracked task
    ``<id>`` (``-2``, ``-3``... appended when the id is taken)."""
    kind = request.get("kind")
    if kind not in KINDS:
        raise AgentError("input", "unknown prepare kind %r" % (kind,))
    spec = request.get("spec")
    if not isinstance(spec, dict):
        raise AgentError("input", "spec must be a mapping")
    base = procs.validate_id(request.get("id"))
    outputs = expand(request["outputs_dir"])
    root = os.path.join(outputs, "_tasks")
    busy = _active_same_kind(root, kind)
    if busy:
        raise AgentError("input", "%s task '%s' is still running on the pod; wait for it (wf task-wait --id %s) "
                                  "or stop it (wf task-kill --id %s)" % (kind, busy, busy, busy))
    for n in range(1, 50):
        task_id = base if n == 1 else "%s-%d" % (base, n)
        if os.path.lexists(os.path.join(root, task_id)):
            continue
        spec_path = os.path.join(outputs, "_control", "specs", task_id + ".json")
        full = dict(spec, kind=kind, task_id=task_id, outputs_dir=outputs, state_file=request.get("state_file"),
                    task_dir=os.path.join(root, task_id))
        write_atomic(spec_path, json.dumps(full, indent=2, sort_keys=True) + "\n", mode=0o600)
        command = "exec " + " ".join(shlex.quote(a) for a in procs.agent_argv() + [KINDS[kind], spec_path])
        task_request = {"outputs_dir": outputs, "id": task_id, "command": command, "env": request.get("env") or {},
                        "session": request.get("session"), "timeout_secs": request.get("timeout_secs")}
        try:
            return tasks.run(task_request)
        except AgentError as exc:
            if exc.extra.get("exists"):
                continue
            raise
    raise AgentError("input", "no free task id for %s" % base)


def result(request):
    """``{id, tail}`` -> ``{"status": ..., "result": result.json or None}``."""
    d = tasks.task_dir(request)
    doc = procs.refresh_status(d)
    status = dict(doc)
    status["dir"] = d
    status["duration_secs"] = procs.duration_secs(doc)
    status["log_tail"] = procs.tail(d, request.get("tail") or TAIL_LINES)
    return {"status": status, "result": read_json(os.path.join(d, RESULT_FILE), default=None, what="result file")}


OPS = {"prepare.start": start, "prepare.result": result}
COMMANDS = {KINDS["bootstrap"]: bootstrap_main, KINDS["checkout"]: checkout_main}
