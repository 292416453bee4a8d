"""``push-data``: a local dataset to ``remote.data_dir/<name>``, verified and placed atomically.

Steps (seed 001's DatasetPacker, without the tarball):

1. a manifest built locally: every regular file's relative path, size and SHA-256
   (streamed, hashed in threads; symlinks are followed, as rsync ``--copy-links`` does);
2. rsync (no compression, ``--modify-window=-1``) into a staging dir
   ``<data_dir>/.incoming/<name>/`` with ``--link-dest`` at the placed copy, so an
   unchanged file is hard-linked there instead of sent: pushing unchanged data again
   transfers nothing;
3. one agent call hashes every staged file against the manifest (which also re-checks
   the files taken from the placed copy: a byte corrupted on the pod is found);
4. the staging dir is swapped in as ``<data_dir>/<name>`` (``renameat2`` exchange), the
   manifest kept as ``<name>/.podflow-manifest.json``.

A verification failure raises ``CheckFailed`` naming the files; nothing is placed, and
the next push sends those files again. The rsync helpers here are shared with
``workflow.sweep.fetch``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from workflow.errors import CheckFailed, ConnectionFailed, InputError, RemoteCommandFailed

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST_NAME = ".podflow-manifest.json"
_CHUNK = 1 << 20
#: rsync exit codes that mean the link (not the files) failed.
_RSYNC_LINK_CODES = {5, 10, 12, 14, 30, 35, 255}

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    """A progress sink that rewrites one status line on stderr."""
    sys.stderr.write("\r\x1b[K" + line if sys.stderr.isatty() else line + "\n")
    sys.stderr.flush()


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"invalid {what} {name!r}: expected {NAME_RE.pattern} (letters, digits, '.', '_', '-')")
    return name


# ------------------------------------------------------------------ hashing


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def hash_files(paths: Sequence[Path], progress: Optional[Progress] = None, sizes: Optional[Sequence[int]] = None
               ) -> List[str]:
    """SHA-256 of each path, in threads (hashlib releases the GIL); progress every ~second."""
    if not paths:
        return []
    total = sum(sizes) if sizes else 0
    done_bytes, done, last = 0, 0, time.monotonic()
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    out: List[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, digest in enumerate(pool.map(sha256_file, paths)):
            out.append(digest)
            done += 1
            done_bytes += sizes[i] if sizes else 0
            if progress and time.monotonic() - last > 1.0:
                last = time.monotonic()
                progress(f"hashing: {done}/{len(paths)} files, {_human(done_bytes)}/{_human(total)}")
    return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# ------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    """Relative POSIX path inside the dataset."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    files: Tuple[ManifestEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_doc(self) -> Dict:
        return {
            "version": 1,
            "name": self.name,
            "total_files": len(self.files),
            "total_bytes": self.total_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def build_manifest(root: os.PathLike, name: str, progress: Optional[Progress] = None) -> Manifest:
    """Walk ``root`` (following symlinks, loops refused) and hash every regular file."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    found: List[Tuple[str, int]] = []
    seen_dirs = set()
    broken: List[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        full = root / rel if rel else root
        st = full.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            raise InputError(f"{full}: directory loop through a symlink")
        seen_dirs.add(key)
        for entry in os.scandir(full):
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            if not rel and entry.name == MANIFEST_NAME:
                continue  # a dataset fetched back from a pod: the pod writes its own
            try:
                est = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                broken.append(relpath)
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(relpath)
            elif stat.S_ISREG(est.st_mode):
                found.append((relpath, est.st_size))
    if broken:
        raise InputError(f"{root}: dangling symlinks: {', '.join(sorted(broken)[:10])}",
                         hint="remove them or point them at real files")
    found.sort()
    digests = hash_files([root / p for p, _ in found], progress, [s for _, s in found])
    return Manifest(name, tuple(ManifestEntry(p, s, d) for (p, s), d in zip(found, digests)))


# ------------------------------------------------------------------ rsync


@dataclass(frozen=True)
class RsyncStats:
    """What one rsync run reported (``--stats`` and the itemized list)."""

    exit_code: int
    files_transferred: int = 0
    """``Number of regular files transferred``."""
    bytes_transferred: int = 0
    """``Total transferred file size`` (bytes of the files sent)."""
    total_size: int = 0
    literal_bytes: int = 0
    files_total: int = 0
    transferred: Tuple[str, ...] = ()
    """Paths of the files received or sent, relative to the transfer root."""
    seconds: float = 0.0
    vanished: bool = False
    """Exit 24: some source files vanished mid-transfer (a run still writing)."""

    def to_doc(self) -> Dict:
        return {"exit_code": self.exit_code, "files_transferred": self.files_transferred,
                "bytes_transferred": self.bytes_transferred, "total_size": self.total_size,
                "literal_bytes": self.literal_bytes, "files_total": self.files_total,
                "seconds": round(self.seconds, 3), "vanished": self.vanished}


_ITEM_PREFIX = "@@pf@@ "  # marks our --out-format lines among rsync's other output
_PROGRESS_RE = re.compile(r"^\s*[\d,]+\s+\d+%")


def _num(text: str, label: str) -> int:
    m = re.search(re.escape(label) + r":\s*([\d,]+)", text)
    return int(m.group(1).replace(",", "")) if m else 0


def remote_shell_arg(transport) -> List[str]:
    shell = transport.rsync_remote_shell()
    if not shell:
        return []
    return ["-e", shell if isinstance(shell, str) else shlex.join(shell)]


def run_rsync(args: Sequence[str], *, transport, progress: Optional[Progress] = None,
              stdin: Optional[bytes] = None, ok_codes: Sequence[int] = (0,)) -> RsyncStats:
    """Run ``rsync ARGS`` (sources/dest included) with stats and an itemized list.

    Raises ``ConnectionFailed`` when the link broke, ``RemoteCommandFailed`` for another
    non-zero exit not in ``ok_codes``.
    """
    argv = ["rsync", "--stats", f"--out-format={_ITEM_PREFIX}%i %n", *remote_shell_arg(transport)]
    if progress:
        argv.append("--info=progress2")
    argv += list(args)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise InputError("rsync is not installed on this machine", hint="apt-get install rsync") from None
    err_chunks: List[bytes] = []
    import threading

    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    lines: List[str] = []
    pending = b""
    last = 0.0
    for chunk in iter(lambda: proc.stdout.read1(65536), b""):
        pending += chunk
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()
        for raw in parts:
            line = raw.decode(errors="replace")
            if progress and _PROGRESS_RE.match(line):
                if time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    progress("transfer: " + " ".join(line.split()))
            elif line:
                lines.append(line)
    if pending:
        lines.append(pending.decode(errors="replace"))
    code = proc.wait()
    reader.join()
    stderr = (err_chunks[0] if err_chunks else b"").decode(errors="replace")
    text = "\n".join(lines)
    if code not in ok_codes:
        cmd = " ".join(shlex.quote(a) for a in argv)
        tail = (stderr or text)[-2000:]
        if code in _RSYNC_LINK_CODES:
            raise ConnectionFailed(f"rsync could not reach the pod (exit {code}): {tail.strip()}",
                                   hint="check 'wf check-connection'; the pod needs rsync installed")
        raise RemoteCommandFailed(cmd, code, tail)
    transferred = []
    for line in lines:
        if line.startswith(_ITEM_PREFIX):
            item, _, path = line[len(_ITEM_PREFIX):].partition(" ")
            if item[:2] in (">f", "<f") or (item[:1] == "c" and item[1:2] == "f"):
                transferred.append(path)
    return RsyncStats(
        exit_code=code,
        files_transferred=_num(text, "Number of regular files transferred"),
        bytes_transferred=_num(text, "Total transferred file size"),
        total_size=_num(text, "Total file size"),
        literal_bytes=_num(text, "Literal data"),
        files_total=_num(text, "Number of files"),
        transferred=tuple(transferred),
        seconds=time.monotonic() - started,
        vanished=code == 24,
    )


# ------------------------------------------------------------------ push


@dataclass(frozen=True)
class PushResult:
    name: str
    placed: str
    """``<data_dir>/<name>`` as the pod sees it."""
    files: int
    bytes: int
    rsync: RsyncStats
    resent: Tuple[str, ...] = ()
    """Files a previous failed verification named, sent again first."""
    hash_secs: float = 0.0
    seconds: float = 0.0
    atomic: bool = True

    def to_doc(self) -> Dict:
        return {"name": self.name, "placed": self.placed, "files": self.files, "bytes": self.bytes,
                "rsync": self.rsync.to_doc(), "resent": list(self.resent), "seconds": round(self.seconds, 3),
                "verify_secs": self.hash_secs, "atomic": self.atomic}


def push_data(transport, agent, data_dir: str, local_path: os.PathLike, name: Optional[str] = None,
              *, progress: Optional[Progress] = None) -> PushResult:
    """Push ``local_path`` to ``<data_dir>/<name>`` on the pod (see the module docstring)."""
    started = time.monotonic()
    src = Path(local_path).expanduser()
    if not src.is_dir():
        raise InputError(f"{local_path}: not a directory", hint="push-data takes a directory of data files")
    name = validate_name(name or src.resolve().name, "dataset name")
    manifest = build_manifest(src, name, progress)
    if progress:
        progress(f"manifest: {len(manifest.files)} files, {_human(manifest.total_bytes)}")
    where = agent.call("data.prepare", data_dir=data_dir, name=name)
    staging, placed = where["staging"], where["placed"]
    common = ["-rtp", "--copy-links", "--modify-window=-1", f"--exclude=/{MANIFEST_NAME}",
              "--exclude=/.podflow-bad.json"]
    link = [f"--link-dest={placed}"] if where.get("placed_exists") else []
    stats = run_rsync([*common, "--delete", *link, f"{src}/", transport.rsync_target(staging + "/")],
                      transport=transport, progress=progress)
    resent: Tuple[str, ...] = ()
    wanted = [p for p in where.get("bad") or () if (src / p).is_file()]
    if wanted:
        # The pod's copies of these were bad and --link-dest just linked them again: send
        # them whatever their times say (rsync renames over the link; the placed copy stays).
        run_rsync([*common, "--ignore-times", "--files-from=-", "--from0", f"{src}/",
                   transport.rsync_target(staging + "/")],
                  transport=transport, stdin=b"\0".join(p.encode() for p in wanted))
        resent = tuple(wanted)
    if progress:
        progress(f"verifying {len(manifest.files)} files on the pod")
    report = agent.call("data.verify", data_dir=data_dir, name=name, manifest=manifest.to_doc())
    if not report["ok"]:
        problems = report["problems"]
        lines = [f"  {p['path']}: {p['reason']}" + (f" (expected {p['expected']}, got {p['actual']})"
                                                     if p["reason"] == "size" else "")
                 for p in problems[:20]]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckFailed(
            f"push-data {name}: {len(problems)} file(s) differ on the pod after upload; nothing was placed:\n"
            + "\n".join(lines) + more,
            hint=f"{placed} was left as it was; run push-data again to re-send the files named",
        )
    placed_doc = agent.call("data.place", data_dir=data_dir, name=name)
    return PushResult(name=name, placed=placed_doc["placed"], files=len(manifest.files),
                      bytes=manifest.total_bytes, rsync=stats, resent=resent,
                      hash_secs=report.get("hash_secs", 0.0), seconds=time.monotonic() - started,
                      atomic=placed_doc.get("atomic", True))
