"""``podagent bootstrap-run SPEC``: the pod's prerequisites, the user's setup scripts, a setup log.

Checks git, tmux, rsync and a python whose ``venv`` works (installing what is missing
with apt when ``bootstrap.install_prereqs`` allows it), runs ``bootstrap.script`` and
the W&B setup script once per content (path + SHA-256 remembered in
``_control/bootstrap.json``), makes sure the watchdog can send notifications (Apprise in
``_control/notify-venv`` when ``WF_NOTIFY_URLS`` is set and the pod's python lacks it),
and writes ``_control/setup.log`` describing the pod.
"""

import collections
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

from .checkout_venv import python_path
from .fsutil import expand, makedirs, read_json, utcnow, write_atomic, write_json_atomic
from .job_status import user_home
from .notify import NOTIFY_VENV, can_import_apprise
from .step_runner import TAIL_LINES, StepFailed, control_dir, run_main

BOOTSTRAP_MARKER = "bootstrap.json"
SETUP_LOG = "setup.log"

#: command -> the apt package that provides it (when bootstrap.apt_packages has no better one).
TOOLS = (("git", "git"), ("tmux", "tmux"), ("rsync", "rsync"))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    python = python_path(python_name)
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
    log_path = os.path.join(control_dir(r.spec), log_name)
    makedirs(os.path.dirname(log_path))
    r.say("$ bash " + shlex.quote(path) + "   (log: %s)" % log_path)
    tail = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", path], cwd=user_home(), stdin=subprocess.DEVNULL,
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
    path = os.path.join(control_dir(spec), SETUP_LOG)
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _notify_apprise(r, control, requirement):
    """Apprise where the watchdog finds it: its own python, else ``_control/notify-venv``,
    made here and given podflow's ``notify`` extra's ``requirement`` with pip."""
    venv = os.path.join(control, NOTIFY_VENV)
    vpy = os.path.join(venv, "bin", "python")
    for python in (sys.executable, vpy):
        if can_import_apprise(python):
            r.say("apprise is importable by %s" % python)
            return
    hint = ("the pod's pip needs an index (PyPI or PIP_INDEX_URL); or install apprise for %s yourself, "
            "or unset WF_NOTIFY_URLS" % sys.executable)
    if not os.path.isfile(vpy):
        r.run([sys.executable, "-m", "venv", venv], what="python -m venv %s" % venv, hint=hint)
    r.run([vpy, "-m", "pip", "install", "--disable-pip-version-check", "-q", requirement],
          what="pip install %s" % requirement, hint=hint)
    if not can_import_apprise(vpy):
        raise StepFailed("apprise was installed into %s but does not import" % venv, hint=hint)
    r.say("apprise installed into %s" % venv)


def do_bootstrap(r, result):
    spec = r.spec
    control = control_dir(spec)
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
    requirement = spec.get("notify_requirement")
    if requirement:
        with r.step("notify", "Apprise for the watchdog's notifications"):
            _notify_apprise(r, control, requirement)
    python = python_path(spec.get("python") or "python3")
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


def bootstrap_main(argv):
    return run_main(argv, "bootstrap", do_bootstrap)
