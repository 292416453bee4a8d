"""What ``check-connection`` and ``remote-exec`` do on the pod, for any transport.

``check_connection`` learns everything in ONE remote exec; its answer is wrapped in
markers so a chatty ``.bashrc`` or login banner cannot break the parsing.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from workflow.errors import RemoteCommandFailed, RemoteProtocolError
from workflow.transport.base import Transport

BEGIN, END = "__PODFLOW_PROBE_BEGIN__", "__PODFLOW_PROBE_END__"

# $1 = outputs dir (a leading ~/ is the pod user's home), $2 = python.
_PROBE = r"""
o="$1"; case "$o" in "~") o="$HOME";; "~/"*) o="$HOME/${o#\~/}";; esac
py="$2"
echo __PODFLOW_PROBE_BEGIN__
echo "user=$(id -un 2>/dev/null || whoami)"
echo "host=$(hostname 2>/dev/null || uname -n)"
echo "home=$HOME"
if command -v "$py" >/dev/null 2>&1; then
  echo "python=$("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
  echo "python_path=$(command -v "$py")"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu=/'
fi
d="$o"; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {print "disk_free_kb=" $4}'
echo "disk_path=$d"
echo __PODFLOW_PROBE_END__
"""


def parse_probe(stdout: str) -> Dict[str, List[str]]:
    """``key=value`` lines between the markers (repeated keys collect into a list)."""
    if BEGIN not in stdout or END not in stdout.split(BEGIN, 1)[1]:
        raise RemoteProtocolError("check-connection: the pod's answer has no probe markers:\n" + stdout[-1000:])
    body = stdout.split(BEGIN, 1)[1].split(END, 1)[0]
    found: Dict[str, List[str]] = {}
    for line in body.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def check_connection(config, transport: Transport) -> Dict[str, Any]:
    """User, host, python, GPUs and free disk of the outputs dir, in one remote exec."""
    python = str(config.get("remote.python", "python3") or "python3")
    outputs = str(config.get("remote.outputs_dir", None) or "~")
    res = transport.run(["sh", "-c", _PROBE, "sh", outputs, python], timeout=60)
    if res.exit_code != 0 and BEGIN not in res.stdout:
        raise RemoteCommandFailed("check-connection probe", res.exit_code, res.stdout + res.stderr)
    found = parse_probe(res.stdout)

    def one(key: str) -> Optional[str]:
        values = found.get(key)
        return values[-1] if values and values[-1] else None

    gpus = []
    for line in found.get("gpu", []):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"index": parts[0], "name": parts[1], "memory": parts[2]})
    free_kb = one("disk_free_kb")
    connect_secs = getattr(transport, "connect_secs", None)
    return {
        "ok": True,
        "transport": transport.kind,
        "endpoint": transport.describe(),
        "connect_ms": None if connect_secs is None else round(connect_secs * 1000),
        "user": one("user"),
        "host": one("host"),
        "home": one("home"),
        "python": one("python"),
        "python_bin": python,
        "python_path": one("python_path"),
        "gpus": gpus,
        "gpu_summary": "none" if not gpus else f"{len(gpus)} x {gpus[0]['name']}",
        "outputs_dir": outputs,
        "disk_path": one("disk_path"),
        "disk_free_bytes": int(free_kb) * 1024 if free_kb and free_kb.isdigit() else None,
    }


# The user's login shell runs CMD (bash on most pods), stderr merged as on a terminal.
_EXEC = 'exec "${SHELL:-/bin/sh}" -c "$1" 2>&1'


def remote_exec(config, transport: Transport, cmd: str, *, timeout: Optional[float] = None,
                on_stdout: Optional[Callable[[str], None]] = None) -> int:
    """Run shell text ``cmd`` on the pod, streaming its output; returns its exit code."""
    env = {str(k): str(v) for k, v in dict(config.get("remote.env", None) or {}).items()}
    res = transport.run(["sh", "-c", _EXEC, "sh", cmd], env=env or None, timeout=timeout, on_stdout=on_stdout)
    if on_stdout is None and res.stdout:
        print(res.stdout, end="")
    if res.exit_code == 124 and res.stderr.startswith("timed out"):
        import sys

        sys.stderr.write(f"remote-exec: {res.stderr.strip()} (the command may still run on the pod)\n")
    return res.exit_code
