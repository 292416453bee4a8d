"""``checkout-run``'s data step: check that the data the runs need is on the pod, else fetch it.

Each ``data.checks`` entry is a path (relative ones under ``remote.data_dir``) and an
optional minimum file count; when one fails, ``data.download`` runs once (in the data
dir, with the venv first on PATH and ``DATA_DIR`` set) and the checks must then pass.
"""

import os

from .checkout_venv import venv_env
from .fsutil import expand, makedirs
from .job_status import user_home
from .step_runner import StepFailed


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


def ensure_data(r, spec, venv):
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
    where = expand(data_dir) if data_dir else user_home()
    makedirs(where)
    r.milestone("data: %d check(s) failed; running data.download in %s" % (len(failures), where))
    env = venv_env(venv)
    env["DATA_DIR"] = where
    r.run(["bash", "-c", download], cwd=where, env=env, what="data.download")
    failures = _check_data(r, checks, data_dir)
    if failures:
        raise StepFailed("data checks still fail after data.download: %s" % "; ".join(failures),
                         hint="check that data.download writes where data.checks look (relative paths are under "
                              "remote.data_dir)")
    return {"downloaded": True}
