"""Data on the pod: verify a pushed dataset against its manifest, place it, list run dirs.

``push-data`` (engine side: ``workflow.datapush``) rsyncs a dataset into a staging dir
``<data_dir>/.incoming/<name>/``; ``data.verify`` hashes every file there in one call
(threads: hashlib releases the GIL), and ``data.place`` swaps it into
``<data_dir>/<name>`` atomically. ``run.manifest`` lists run dirs for ``fetch-run`` /
``fetch-all`` (paths, sizes, mtimes, optionally SHA-256 of the files asked for).
"""

import ctypes
import ctypes.util
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from .fsutil import expand, makedirs, read_json, write_atomic
from .procs import FIFO_FILE, LOCK_FILE, WRAPPER_LOG
from .protocol import AgentError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST_NAME = ".podflow-manifest.json"
BAD_LIST_NAME = ".podflow-bad.json"
INCOMING = ".incoming"
ENDED_STATES = ("success", "failed", "timed_out", "cancelled", "lost")
#: What ``--exclude-checkpoints`` leaves out (the engine gives rsync the same rules).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
CHECKPOINT_DIR_GLOB = "checkpoint*"
_CHUNK = 1 << 20


def _name(request, key="name"):
    value = request.get(key)
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise AgentError("input", "invalid %s %r (expected %s)" % (key, value, NAME_RE.pattern))
    return value


def sha256_file(path):
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def _hash_many(paths):
    """SHA-256 of each path (None when unreadable), in parallel threads."""
    def one(p):
        try:
            return sha256_file(p)
        except (IOError, OSError):
            return None
    if len(paths) <= 1:
        return [one(p) for p in paths]
    workers = max(1, min(8, (os.cpu_count() or 1), len(paths)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def _walk_files(root, skip_dir=None, skip_file=None):
    """``(relpath, lstat)`` of every regular file under ``root`` (symlinks are not followed)."""
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            entries = list(os.scandir(full))
        except OSError:
            continue  # vanished while we walked (a run still writing)
        for entry in entries:
            relpath = entry.name if not rel else rel + "/" + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if skip_dir is None or not skip_dir(entry.name):
                    stack.append(relpath)
            elif stat.S_ISREG(st.st_mode):
                if skip_file is None or not skip_file(entry.name):
                    out.append((relpath, st))
    out.sort(key=lambda item: item[0])
    return out


# ------------------------------------------------------------------ datasets


def _paths(request):
    data_dir = expand(request["data_dir"])
    name = _name(request)
    staging = os.path.join(data_dir, INCOMING, name)
    return data_dir, name, staging, os.path.join(data_dir, name)


def prepare(request):
    """``{data_dir, name}`` -> absolute paths, and files a previous failed verify named."""
    data_dir, name, staging, placed = _paths(request)
    makedirs(os.path.join(data_dir, INCOMING))
    makedirs(staging)
    bad = read_json(os.path.join(staging, BAD_LIST_NAME), default={}, what="bad-file list")
    return {
        "data_dir": data_dir,
        "staging": staging,
        "placed": placed,
        "placed_exists": os.path.isdir(placed),
        "bad": [p for p in bad.get("paths", []) if isinstance(p, str)],
    }


def verify(request):
    """``{data_dir, name, manifest: {files: [{path, size, sha256}]}}``: hash every staged file.

    On success the manifest is written as ``.podflow-manifest.json`` in the staging dir.
    On failure the files that differ are removed from staging and remembered, so the
    next push sends them again instead of re-using the pod's bad copy.
    """
    data_dir, name, staging, placed = _paths(request)
    manifest = request.get("manifest") or {}
    expected = {}
    for item in manifest.get("files", []):
        expected[item["path"]] = item
    started = time.time()
    actual = dict(_walk_files(staging))
    actual.pop(MANIFEST_NAME, None)
    actual.pop(BAD_LIST_NAME, None)
    present = sorted(p for p in expected if p in actual)
    digests = _hash_many([os.path.join(staging, p) for p in present])
    problems = []
    for path, digest in zip(present, digests):
        want = expected[path]
        size = actual[path].st_size
        if size != want["size"]:
            problems.append({"path": path, "reason": "size", "expected": want["size"], "actual": size})
        elif digest != want["sha256"]:
            problems.append({"path": path, "reason": "sha256", "expected": want["sha256"], "actual": digest})
    for path in sorted(set(expected) - set(actual)):
        problems.append({"path": path, "reason": "missing"})
    for path in sorted(set(actual) - set(expected)):
        problems.append({"path": path, "reason": "unexpected"})
    result = {
        "ok": not problems,
        "problems": problems,
        "files": len(present),
        "bytes": sum(actual[p].st_size for p in present),
        "hash_secs": round(time.time() - started, 3),
    }
    bad_path = os.path.join(staging, BAD_LIST_NAME)
    if problems:
        bad = [p["path"] for p in problems if p["reason"] in ("size", "sha256")]
        for path in [p["path"] for p in problems if p["reason"] in ("size", "sha256", "unexpected")]:
            try:
                os.unlink(os.path.join(staging, path))  # breaks the hard link; the placed copy is untouched
            except OSError:
                pass
        write_atomic(bad_path, json.dumps({"paths": bad}) + "\n")
    else:
        try:
            os.unlink(bad_path)
        except OSError:
            pass
        doc = dict(manifest)
        doc["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_atomic(os.path.join(staging, MANIFEST_NAME), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return result


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def place(request):
    """``{data_dir, name}``: the verified staging dir becomes ``<data_dir>/<name>`` atomically."""
    data_dir, name, staging, placed = _paths(request)
    if not os.path.isfile(os.path.join(staging, MANIFEST_NAME)):
        raise AgentError("check", "staging dir %s holds no verified manifest; nothing was placed" % staging)
    if os.path.lexists(placed) and not os.path.isdir(placed):
        raise AgentError("input", "%s exists and is not a directory; move it away first" % placed)
    if not os.path.isdir(placed):
        os.rename(staging, placed)
        return {"placed": placed, "replaced": False, "atomic": True}
    if _exchange(staging, placed):
        old, atomic = staging, True
    else:  # two renames: <name> is absent for an instant, never half-written
        old = os.path.join(data_dir, INCOMING, ".old-%s-%d" % (name, os.getpid()))
        os.rename(placed, old)
        os.rename(staging, placed)
        atomic = False
    shutil.rmtree(old, ignore_errors=True)
    return {"placed": placed, "replaced": True, "atomic": atomic}


# ------------------------------------------------------------------ run dirs


def _is_checkpoint_file(name):
    return name.endswith(CHECKPOINT_SUFFIXES)


def _is_checkpoint_dir(name):
    return fnmatch.fnmatchcase(name, CHECKPOINT_DIR_GLOB)


def _run_state(run_dir):
    try:
        doc = read_json(os.path.join(run_dir, "status.json"), default=None, what="run status")
    except AgentError:
        return "corrupt"
    if doc is None:
        return None
    return doc.get("state") if isinstance(doc.get("state"), str) else "unknown"


def list_runs(outputs):
    """Run ids under ``outputs``: dirs whose names are valid ids holding a ``status.json``."""
    try:
        names = os.listdir(outputs)
    except OSError:
        return []
    return sorted(n for n in names if NAME_RE.match(n) and os.path.isfile(os.path.join(outputs, n, "status.json")))


#: The engine's own files in a run dir (the wrapper's lock, fifo and log): never fetched.
ENGINE_FILES = (LOCK_FILE, FIFO_FILE, WRAPPER_LOG)


def run_manifest(request):
    """``{outputs_dir, runs: [ids] | null, files: bool, exclude_checkpoints, sha256: {run: [paths]},
    stable_before_ns: int | {run: int}, stable_age_secs, running_margin_secs}`` -> ``{now, runs: {id: {exists, state, ended, files: [...]}}}``.

    ``runs: null`` means every run dir. A file's ``sha256`` is computed only when asked
    for and when it did not change since ``stable_before_ns`` (a run still writing), or
    since ``stable_age_secs`` ago (plus ``running_margin_secs`` for a run not ended).
    """
    outputs = expand(request["outputs_dir"])
    runs = request.get("runs")
    if runs is None:
        runs = list_runs(outputs)
    for run in runs:
        if not isinstance(run, str) or not NAME_RE.match(run):
            raise AgentError("input", "invalid run id %r" % (run,))
    want_files = bool(request.get("files", True))
    exclude = bool(request.get("exclude_checkpoints"))
    sha_wanted = request.get("sha256") or {}
    only = request.get("paths") or {}
    stable_before = request.get("stable_before_ns")
    now = time.time()
    age = request.get("stable_age_secs")  # "since the transfer began", in the pod's own clock
    margin = float(request.get("running_margin_secs") or 0)
    out = {}
    for run in runs:
        run_dir = os.path.join(outputs, run)
        if not os.path.isdir(run_dir):
            out[run] = {"exists": False, "state": None, "ended": False, "files": []}
            continue
        state = _run_state(run_dir)
        entry = {"exists": True, "state": state, "ended": state in ENDED_STATES}
        before = stable_before.get(run) if isinstance(stable_before, dict) else stable_before
        if age is not None:
            before = int((now - float(age) - (0 if entry["ended"] else margin)) * 1e9)
        if before is not None:
            entry["stable_before_ns"] = before
            try:
                status_mtime = os.stat(os.path.join(run_dir, "status.json")).st_mtime_ns
            except OSError:
                status_mtime = None
            # Ended before the transfer began: nothing it wrote can have been missed.
            entry["ended_before"] = bool(entry["ended"] and status_mtime is not None and status_mtime < before)
        if want_files:
            listing = _walk_files(run_dir, _is_checkpoint_dir if exclude else None,
                                  _is_checkpoint_file if exclude else None)
            listing = [item for item in listing if item[0] not in ENGINE_FILES]
            if run in only:
                keep = set(only[run])
                listing = [item for item in listing if item[0] in keep]
            files = [{"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns} for p, st in listing]
            wanted = set(sha_wanted.get(run, []))
            todo = [f for f in files if f["path"] in wanted and (before is None or f["mtime_ns"] < before)]
            for f, digest in zip(todo, _hash_many([os.path.join(run_dir, f["path"]) for f in todo])):
                f["sha256"] = digest
            entry["files"] = files
        out[run] = entry
    return {"now": now, "outputs_dir": outputs, "runs": out}


OPS = {
    "data.prepare": prepare,
    "data.verify": verify,
    "data.place": place,
    "run.manifest": run_manifest,
}
