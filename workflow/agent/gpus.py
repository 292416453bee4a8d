"""The pod's GPUs as the sweep sees them: ``remote.env``/the environment's
``CUDA_VISIBLE_DEVICES``, else nvidia-smi, else torch in the checkout's venv."""

import os
import shutil
import subprocess


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


def detect_gpus(remote_env=None, venv_python=None):
    """(gpu ids, where they came from): CUDA_VISIBLE_DEVICES of remote.env, else of the
    pod's environment, else nvidia-smi, else torch in the checkout's venv, else none."""
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
    ids = _torch_gpus(venv_python)
    if ids:
        return ids, "torch"
    return [], "none"

