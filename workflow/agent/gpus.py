"""The pod's GPUs as the sweep sees them: ``remote.env``/the environment's
``CUDA_VISIBLE_DEVICES``, else nvidia-smi, else torch in the checkout's venv (only
where a GPU device node exists: importing torch to hear "none" costs seconds)."""

import glob
import json
import os
import shutil
import subprocess

from .fsutil import write_json_atomic
from .job_status import boot_id


#: Device nodes through which torch can reach a GPU (NVIDIA, AMD ROCm, WSL2): a pod with
#: none of them has no GPU torch could count, so torch is not imported to say so.
DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def _split_gpus(text):
    ids = [t.strip() for t in (text or "").split(",") if t.strip()]
    if ids in (["-1"], ["none"], ["NoDevFiles"]):
        return []
    return ids


def _torch_gpus(python):
    """GPU ids as torch in the checkout's venv counts them (pods without nvidia-smi)."""
    if not python or not os.path.isfile(python):
        return None
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        res = subprocess.run([python, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=120)
        count = int(res.stdout.decode("utf-8", "replace").strip().splitlines()[-1]) if res.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return [str(i) for i in range(count)]


def _venv_key(python):
    """What torch's answer depends on: the venv's python and packages (their dirs' mtimes
    change when the venv is made again or a package is added or replaced), and the boot."""
    venv = os.path.dirname(os.path.dirname(python))
    try:
        stamps = [os.lstat(python).st_mtime_ns] + [os.stat(d).st_mtime_ns for d in
                                                   sorted(glob.glob(os.path.join(venv, "lib", "python*", "site-packages")))]
    except OSError:
        return None
    return [os.path.abspath(python), stamps, boot_id()]


def cache_path(outputs):
    """Where a pod keeps torch's GPU count (``detect_gpus``' ``cache``)."""
    return os.path.join(outputs, "_control", "torch-gpus.json")


def keep_torch_count(python, cache, ids, key=None):
    """Keep torch's answer ``ids`` for the venv of ``python`` (the checkout's preflight has
    it: the first sweep-start then needs no import of its own)."""
    if key is None:
        key = _venv_key(python) if os.path.isfile(python) else None
    if key is not None:
        try:
            write_json_atomic(cache, {"key": key, "ids": list(ids)})
        except (IOError, OSError):
            pass  # a cache that cannot be written only costs the next probe its time


def _torch_gpus_kept(python, cache):
    """``_torch_gpus``, its answer kept in the file ``cache`` while ``_venv_key`` holds:
    importing torch takes seconds, and every sweep-start probes (on a pool: twice per pod,
    and again for every run a pod takes from another)."""
    key = _venv_key(python) if cache and python and os.path.isfile(python) else None
    if key is not None:
        try:
            with open(cache) as fh:
                doc = json.load(fh)
            if doc.get("key") == key:
                return list(doc["ids"])
        except (IOError, OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    ids = _torch_gpus(python)
    if key is not None and ids is not None:
        keep_torch_count(python, cache, ids, key)
    return ids


def detect_gpus(remote_env=None, venv_python=None, cache=None):
    """(gpu ids, where they came from): CUDA_VISIBLE_DEVICES of remote.env, else of the
    pod's environment, else nvidia-smi, else torch in the checkout's venv (its answer
    kept in the file ``cache``, when given) when the pod has a GPU device node
    (``DEVICE_NODES``), else none."""
    remote_env = remote_env or {}
    if "CUDA_VISIBLE_DEVICES" in remote_env:
        return _split_gpus(str(remote_env["CUDA_VISIBLE_DEVICES"])), "remote.env CUDA_VISIBLE_DEVICES"
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return _split_gpus(os.environ["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            res = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            if res.returncode == 0:
                ids = [line.strip() for line in res.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
                return ids, "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    if not any(glob.glob(pattern) for pattern in DEVICE_NODES):
        return [], "none"
    ids = _torch_gpus_kept(venv_python, cache)
    if ids:
        return ids, "torch"
    return [], "none"

