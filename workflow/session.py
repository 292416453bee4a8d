"""The local session file ``.podflow/session.json``: which pod this project rented.

Non-secret facts only: provider, pod id and name, SSH endpoint, when it was created,
its price per hour, ``pod.ttl``, and which runs were fetched from it (so
``pod-down --destroy`` can refuse to lose unfetched results). Never an API key or a
password. Writes are atomic (temp file + rename) under a lock, so a reader never sees
half a file and two writers (``fetch-all`` in parallel) never lose an update.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from workflow.errors import InputError

SESSION_FILE = Path(".podflow") / "session.json"
VERSION = 1


@dataclass(frozen=True)
class Session:
    """What this project knows about the pod it uses."""

    provider: str
    """``local``, ``ssh``, ``lium``, ``vastai`` or ``runpod``."""
    pod_id: Optional[str] = None
    """The provider's id of the pod (None for local/ssh)."""
    name: Optional[str] = None
    """The pod's name/label at the provider."""
    host: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    """The SSH endpoint that worked at ``pod-up``."""
    created_at: Optional[float] = None
    """Epoch seconds the pod was rented (or adopted)."""
    created_by_podflow: bool = False
    """True when ``pod-up`` rented it; False for ``pod.target`` / adopted pods."""
    price_per_hour: Optional[float] = None
    gpu: Optional[str] = None
    ttl: Optional[str] = None
    """``pod.ttl`` as configured when the pod came up (shown by ``pod-status``)."""
    cluster: Optional[str] = None
    """The private network the pod was rented on with the pool's others (``pod.network:
    cluster``): the RunPod instant cluster id, the Vast overlay name."""
    fetched: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """run id -> {"at": epoch, "dest": local path} for every run fetched from this pod."""
    updated_at: Optional[float] = None

    def endpoint(self):
        from workflow.transport.endpoint import Endpoint

        if not self.host:
            return None
        return Endpoint(host=self.host, port=int(self.port or 22), user=self.user)

    def to_dict(self) -> Dict[str, Any]:
        doc = asdict(self)
        doc["version"] = VERSION
        return doc

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "Session":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})


def path_for(config=None, root: Optional[os.PathLike] = None) -> Path:
    """``.podflow/session.json`` for the pool's first pod; ``.podflow/session-<pod>.json``
    for the others (SPEC §8: each pod keeps its own records)."""
    base = Path(root) if root is not None else (Path(config.root) if config is not None else Path.cwd())
    pod = getattr(config, "pod_name", "p0") if config is not None else "p0"
    return base / (SESSION_FILE if pod == "p0" else SESSION_FILE.with_name(f"session-{pod}.json"))


def load(config=None, *, root: Optional[os.PathLike] = None) -> Optional[Session]:
    """The session, or None when this project has none."""
    return _read(path_for(config, root))


def _read(p: Path) -> Optional[Session]:
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or "provider" not in doc:
            raise ValueError("not a session document")
        return Session.from_dict(doc)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{p}: unreadable session file ({exc})",
                         hint="delete it if no pod is running, or fix the JSON") from None


def _write(p: Path, session: Session) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".session.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(session.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(p: Path) -> Iterator[None]:
    import fcntl

    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def save(session: Session, config=None, *, root: Optional[os.PathLike] = None) -> Session:
    """Write ``session`` atomically (replacing any previous one)."""
    p = path_for(config, root)
    session = replace(session, updated_at=time.time())
    with _locked(p):
        _write(p, session)
    return session


def update(config=None, *, root: Optional[os.PathLike] = None, **fields: Any) -> Optional[Session]:
    """Change some fields of the existing session (no-op returning None when there is none)."""
    p = path_for(config, root)
    with _locked(p):
        current = _read(p)
        if current is None:
            return None
        new = replace(current, updated_at=time.time(), **fields)
        _write(p, new)
        return new


def clear(config=None, *, root: Optional[os.PathLike] = None) -> None:
    """Forget the pod (after it was destroyed)."""
    p = path_for(config, root)
    with _locked(p):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def record_fetched(run_id: str, *, config=None, root: Optional[os.PathLike] = None,
                   dest: Optional[os.PathLike] = None, provider: Optional[str] = None,
                   complete: bool = True, **details: Any) -> Session:
    """Note that ``run_id`` was fetched to this machine (called by ``fetch-run``/``fetch-all``).

    ``complete=False`` (a partial fetch, or a run still writing) is not counted as
    fetched: a later fetch must finish it before ``pod-down --destroy`` lets it go.
    ``details`` (files, bytes, state...) are stored beside it, JSON-serialisable only.
    Creates the session when there is none yet (e.g. the ``local`` or ``ssh`` provider,
    whose pods are never rented), so ``pod-down`` can always tell fetched from unfetched.
    """
    p = path_for(config, root)
    with _locked(p):
        current = _read(p)
        if current is None:
            current = Session(provider=provider or (config.pod.provider if config is not None else "local"))
        fetched = dict(current.fetched)
        extra = {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}
        if complete:
            fetched[str(run_id)] = {"at": time.time(), "dest": str(dest) if dest is not None else None, **extra}
        else:
            fetched.pop(str(run_id), None)
        new = replace(current, fetched=fetched, updated_at=time.time())
        _write(p, new)
        return new


def fetched_runs(config=None, *, root: Optional[os.PathLike] = None) -> set:
    s = load(config, root=root)
    return set(s.fetched) if s else set()
