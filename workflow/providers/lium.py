"""Lium through the ``lium.io`` SDK (``pip install 'podflow[lium]'``).

An offer is an executor (``Lium.ls``); a pod is rented with ``Lium.up`` and removed
with ``Lium.rm``. Lium pods cannot be stopped, only destroyed. The SSH endpoint comes
from the pod's ``ssh_connect_cmd`` (``ssh root@1.2.3.4 -p 40022``), parsed here.
``LIUM_BASE_URL`` (with its ``/api``) points the SDK at another gateway.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path
from typing import Any, List, Optional

from workflow.errors import ProviderError
from workflow.providers.base import (
    CreateRequest,
    Offer,
    OfferSpec,
    OfferUnavailable,
    PodGone,
    PodInfo,
    PodState,
    Provider,
    env_key,
    import_sdk,
    parse_time,
)
from workflow.transport.endpoint import Endpoint

DEFAULT_BASE = "https://lium.io/api"


def parse_ssh_cmd(cmd: Optional[str]) -> Optional[Endpoint]:
    """``ssh [-p PORT] [-i KEY] [-o ...] user@host [-p PORT]`` -> Endpoint; None if unparsable."""
    if not cmd:
        return None
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if words and os.path.basename(words[0]) == "ssh":
        words = words[1:]
    port, user, host = 22, None, None
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-p" and i + 1 < len(words):
            port = int(words[i + 1])
            i += 2
            continue
        if w.startswith("-p") and w[2:].isdigit():
            port = int(w[2:])
        elif w in ("-i", "-o", "-l", "-F", "-J") and i + 1 < len(words):
            if w == "-l":
                user = words[i + 1]
            i += 2
            continue
        elif not w.startswith("-") and host is None:
            if w.startswith("ssh://"):
                w = w[len("ssh://"):]
            if "@" in w:
                user, w = w.rsplit("@", 1)
            if re.fullmatch(r"[^:]+:\d+", w):
                w, p = w.split(":")
                port = int(p)
            host = w
        i += 1
    if not host:
        return None
    return Endpoint(host=host, port=port, user=user)


class LiumProvider(Provider):
    name = "lium"
    can_create = can_destroy = True
    can_stop = can_start = False
    default_user = "root"
    retry_attempts = 2  # the SDK already retries reads (3 tries, 1 s / 2 s backoff)
    status_map = {
        "running": PodState.RUNNING,
        "pending": PodState.PENDING,
        "rent_pending": PodState.PENDING,
        "creating": PodState.PENDING,
        "preparing": PodState.PENDING,
        "starting": PodState.STARTING,
        "reboot_pending": PodState.STARTING,
        "rebooting": PodState.STARTING,
        "stopped": PodState.STOPPED,
        "failed": PodState.ERROR,
        "error": PodState.ERROR,
        "deleting": PodState.TERMINATED,
        "deleted": PodState.TERMINATED,
        "removed": PodState.TERMINATED,
        "terminated": PodState.TERMINATED,
    }

    def __init__(self, config):
        super().__init__(config)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            sdk = import_sdk("lium.sdk", self.name, "lium")
            key = env_key("LIUM_API_KEY", self.name)
            idf = self.identity_file()
            cfg = sdk.Config(api_key=key, base_url=os.environ.get("LIUM_BASE_URL") or DEFAULT_BASE,
                             ssh_key_path=Path(os.path.expanduser(idf)) if idf else None)
            self._client = sdk.Lium(config=cfg, source="podflow")
        return self._client

    # ---- errors ------------------------------------------------------------------

    def is_transient(self, exc: BaseException) -> bool:
        import requests

        try:
            from lium.sdk import LiumRateLimitError, LiumServerError
        except ImportError:  # pragma: no cover
            return False
        return isinstance(exc, (LiumServerError, LiumRateLimitError, requests.ConnectionError, requests.Timeout))

    def describe_error(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        # the SDK names the key by a fingerprint (first/last characters): never show any part of it
        text = re.sub(r"key \S+…\S+", "key ***", text)
        key = os.environ.get("LIUM_API_KEY")
        return text.replace(key, "***") if key else text

    def _call(self, what: str, fn, *args, **kwargs):
        from lium.sdk import LiumError, LiumNotFoundError

        try:
            return self.api(what, fn, *args, **kwargs)
        except LiumNotFoundError:
            raise PodGone(self.name, f"{what}: not found") from None
        except LiumError as exc:
            raise ProviderError(self.name, f"{what} failed: {self.describe_error(exc)}") from None
        except OSError as exc:
            raise ProviderError(self.name, f"{what} failed: {self.describe_error(exc)}") from None

    # ---- contract ----------------------------------------------------------------

    def search_offers(self, spec: OfferSpec) -> List[Offer]:
        execs = self._call("list executors", self.client.ls)
        offers = []
        for e in execs or []:
            count = e.available_gpu_count or e.gpu_count
            per_gpu = e.price_per_gpu or (e.price_per_hour / max(1, e.gpu_count))
            loc = e.location or {}
            region = ", ".join(str(loc[k]) for k in ("city", "region", "country") if loc.get(k)) or None
            offers.append(Offer(
                provider=self.name, id=str(e.id), gpu=str(e.gpu_type or ""), num_gpus=int(count or 0),
                price_per_hour=round(float(per_gpu) * int(count or 1), 4), gpu_ram_gb=_gpu_ram_gb(e.specs),
                reliability=_float(getattr(e, "reliability_score", None)), region=region,
                description=f"{e.huid} ({e.machine_name})",
            ))
        return offers

    def create(self, offer: Offer, request: CreateRequest) -> PodInfo:
        import requests
        from lium.sdk import (LiumAuthError, LiumError, LiumInsufficientBalanceError, LiumRentOutcomeUnknownError,
                              LiumServerError)

        kwargs: dict = {"executor_id": offer.id, "name": request.name}
        if request.template_id:
            kwargs["template_id"] = request.template_id
        elif request.image:
            kwargs["image"] = request.image
        if request.volume:
            kwargs["volume_id"] = str(request.volume)
        if request.public_key:
            kwargs["ssh_keys"] = [request.public_key]
        if request.ttl_hours:
            kwargs["termination_hours"] = max(1, min(720, int(math.ceil(request.ttl_hours))))
        try:
            created = self.client.up(**kwargs)
        except ValueError as exc:  # the SDK: executor no longer listed, no SSH key...
            if "key" in str(exc).lower() and "ssh" in str(exc).lower():
                raise ProviderError(self.name, str(exc), hint="run 'wf setup-keys'") from None
            raise OfferUnavailable(f"executor {offer.id}: {exc}") from None
        except LiumRentOutcomeUnknownError as exc:
            pods = [p for p in (getattr(exc, "candidates", None) or [])]
            raise ProviderError(self.name, f"rent outcome unknown: {self.describe_error(exc)}",
                                hint=f"check 'lium ps'{' (maybe ' + ', '.join(map(str, pods)) + ')' if pods else ''} "
                                     "and remove unwanted pods") from None
        except (LiumAuthError, LiumInsufficientBalanceError) as exc:
            raise ProviderError(self.name, self.describe_error(exc)) from None
        except (LiumServerError, requests.RequestException) as exc:
            raise OfferUnavailable(f"rent of executor {offer.id} failed ({self.describe_error(exc)})") from None
        except LiumError as exc:  # 4xx: executor busy / rented meanwhile
            raise OfferUnavailable(f"executor {offer.id}: {self.describe_error(exc)}") from None
        pod_id = str(created.get("id") if isinstance(created, dict) else getattr(created, "id", ""))
        try:
            return self.get(pod_id)
        except PodGone:
            return PodInfo(provider=self.name, id=pod_id, name=request.name, state=PodState.PENDING,
                           raw_state=str((created or {}).get("status") or "PENDING"))

    def _pods(self) -> list:
        return self._call("list pods", self.client.ps) or []

    def _info(self, p) -> PodInfo:
        ep = parse_ssh_cmd(p.ssh_cmd)
        if ep is None and p.executor is not None and isinstance(p.ports, dict):
            public = p.ports.get("22") or p.ports.get(22)
            if public and p.executor.ip:
                ep = Endpoint(host=p.executor.ip, port=int(public))
        ex = p.executor
        return PodInfo(
            provider=self.name, id=str(p.id), name=str(p.name or ""), state=self.map_state(p.status),
            raw_state=str(p.status or ""), endpoints=self.with_user([ep] if ep else []),
            price_per_hour=_float(ex.price_per_hour) if ex else None, gpu=str(ex.gpu_type) if ex else "",
            num_gpus=p.gpu_count or (ex.gpu_count if ex else None), created_at=parse_time(p.created_at),
            started_at=parse_time(p.created_at), has_volume=False,
        )

    def get(self, pod_id: str) -> PodInfo:
        for p in self._pods():
            if str(p.id) == str(pod_id):
                return self._info(p)
        raise PodGone(self.name, f"pod {pod_id} not found")

    def list(self) -> List[PodInfo]:
        return [self._info(p) for p in self._pods()]

    def find(self, target: str) -> PodInfo:
        for p in self._pods():
            if target in (str(p.id), p.name, p.huid):
                return self._info(p)
        raise PodGone(self.name, f"no pod with id, name or huid {target!r}", hint="'lium ps' lists your pods")

    def destroy(self, pod_id: str) -> None:
        for p in self._pods():
            if str(p.id) == str(pod_id):
                try:
                    self._call(f"remove pod {pod_id}", self.client.rm, p)
                except PodGone:
                    pass
                return

    def stop_unsupported_reason(self, pod) -> Optional[str]:
        return "Lium pods cannot be stopped, only destroyed"


def _gpu_ram_gb(specs: Any) -> Optional[float]:
    try:
        details = ((specs or {}).get("gpu") or {}).get("details") or []
        cap = details[0].get("capacity") or details[0].get("memory_total")
        cap = float(cap)
        return round(cap / 1024.0, 1) if cap > 1000 else cap  # MiB in node-check scrapes
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _float(v) -> Optional[float]:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
