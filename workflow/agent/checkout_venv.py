"""The checkout's venv and the torch preflight (``checkout-run``'s venv and preflight steps).

The venv (``<workdir>/.venv``) is made from ``remote.python`` with
``--system-site-packages``, so the image's torch is used, not reinstalled; when
``remote.python`` is itself a venv's python, a ``.pth`` file makes that venv's packages
visible too. The preflight imports torch in it and checks CUDA as the spec asks.
"""

import json
import os
import shutil

from .fsutil import expand, read_json, utcnow, write_atomic, write_json_atomic
from .step_runner import StepFailed

VENV_NAME = ".venv"
PARENT_PTH = "_podflow_parent_venv.pth"
VENV_META = ".podflow-venv.json"
_PAYLOAD = "@@PODFLOW-JSON@@"


def python_path(name):
    """The executable ``remote.python`` names (a path, or a name on PATH), or None."""
    path = expand(name) if os.sep in name else shutil.which(name)
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


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


def make_venv(r, spec, workdir):
    venv = os.path.join(workdir, VENV_NAME)
    name = spec.get("python") or "python3"
    python = python_path(name)
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


def venv_env(venv):
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


def preflight(r, spec, venv, python):
    vpy = os.path.join(venv, "bin", "python")
    code, out, err = r.quiet([vpy, "-c", _PREFLIGHT], env=venv_env(venv))
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
