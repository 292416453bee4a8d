"""The one provider contract (SPEC §7), SkyPilot-style: each action declared once here.

Every provider (``local``, ``ssh``, ``lium``, ``vastai``, ``runpod``) subclasses
``Provider`` and implements the actions it has; an action it lacks raises
``UnsupportedAction`` naming the provider and the action. Data crossing the boundary
is frozen dataclasses (``Offer``, ``PodInfo``); a provider's own dicts stay inside
its module, translated by its ``status_map``.

API calls go through ``Provider.api`` so that a transient failure (5xx, connection
reset) is retried with backoff within a bound and then becomes ``ProviderError``
(exit 4). API keys are read from the environment only, and never appear in messages.
"""

from __future__ import annotations

import abc
import enum
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from workflow.errors import ConfigError, ProviderError, UnsupportedAction
from workflow.transport.endpoint import Endpoint


class PodState(str, enum.Enum):
    """A provider-neutral pod state; each provider's ``status_map`` maps onto these."""

    PENDING = "pending"  # being allocated / image pulling
    STARTING = "starting"  # container starting, not yet reported running
    RUNNING = "running"  # the provider says running (not yet "usable": see readiness)
    STOPPED = "stopped"  # stopped/exited; disk kept, GPU billing paused
    ERROR = "error"  # unrecoverable on the provider's side
    TERMINATED = "terminated"  # destroyed / gone
    UNKNOWN = "unknown"

    def is_terminal(self) -> bool:
        return self in (PodState.ERROR, PodState.TERMINATED)


@dataclass(frozen=True)
class Offer:
    """One rentable machine (Vast ask, Lium executor, RunPod GPU type)."""

    provider: str
    """Which provider offers it."""
    id: str
    """The provider's id of the offer (ask id, executor id, GPU type id)."""
    gpu: str
    """GPU model name as the provider spells it ("" for CPU-only)."""
    num_gpus: int
    """GPUs on the machine that the rental gets."""
    price_per_hour: float
    """USD per hour for the whole rental."""
    gpu_ram_gb: Optional[float] = None
    """Memory per GPU in GB, when known."""
    reliability: Optional[float] = None
    """0..1 provider-reported reliability, when known."""
    region: Optional[str] = None
    """Location / data center as the provider names it."""
    description: str = ""
    """A short human line (host, CPU, disk...)."""
    members: Tuple[str, ...] = ()
    """For an offer of several pods on one private network (``pod.network: cluster``) made
    of separate machine offers (Vast: asks of one physical cluster): their ids, cheapest
    first. Empty otherwise."""

    def as_dict(self) -> Dict[str, Any]:
        return {
            "provider": self.provider, "id": self.id, "gpu": self.gpu, "num_gpus": self.num_gpus,
            "price_per_hour": self.price_per_hour, "gpu_ram_gb": self.gpu_ram_gb,
            "reliability": self.reliability, "region": self.region, "description": self.description,
        }


@dataclass(frozen=True)
class PodInfo:
    """What a provider says about one pod, normalised."""

    provider: str
    id: str
    """The provider's pod/instance id, as a string."""
    state: PodState
    raw_state: str = ""
    """The provider's own word for the state (shown beside ``state``)."""
    name: str = ""
    """Name or label given at creation."""
    endpoints: Tuple[Endpoint, ...] = ()
    """SSH endpoints to try, best first (e.g. Vast: direct port, then its proxy)."""
    price_per_hour: Optional[float] = None
    gpu: str = ""
    num_gpus: Optional[int] = None
    created_at: Optional[float] = None
    """Epoch seconds the pod was created, when the provider says."""
    started_at: Optional[float] = None
    """Epoch seconds the pod last started (uptime is from here)."""
    has_volume: Optional[bool] = None
    """Whether the pod keeps a disk across a stop (None: unknown)."""
    cluster_id: Optional[str] = None
    """The private network the pod belongs to (RunPod instant cluster id), when the API says."""
    private_addr: Optional[str] = None
    """Its address on that network, when the API says (RunPod ``cluster.ip``)."""

    @property
    def endpoint(self) -> Optional[Endpoint]:
        return self.endpoints[0] if self.endpoints else None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "provider": self.provider, "id": self.id, "name": self.name, "state": self.state.value,
            "provider_state": self.raw_state, "endpoints": [str(e) for e in self.endpoints],
            "price_per_hour": self.price_per_hour, "gpu": self.gpu, "num_gpus": self.num_gpus,
            "created_at": self.created_at, "started_at": self.started_at, "has_volume": self.has_volume,
            "cluster_id": self.cluster_id, "private_addr": self.private_addr,
        }


@dataclass(frozen=True)
class Cluster:
    """Several pods rented together on one private network (``pod.network: cluster``)."""

    provider: str
    id: str
    """The provider's id of the network: a RunPod instant cluster id, a Vast overlay name."""
    pod_ids: Tuple[str, ...]
    """The member pods, node rank order (the pool's p0, p1, ...)."""
    price_per_hour: Optional[float] = None
    """USD per hour for all the pods together, when known."""


def _norm(name: str) -> str:
    """GPU names compared without case, spaces, '_' or '-': "RTX 4090" ~ "RTX4090" ~ "rtx_4090"."""
    return "".join(ch for ch in name.lower() if ch not in " _-")


@dataclass(frozen=True)
class OfferSpec:
    """What ``offers`` and ``pod-up`` look for (config ``pod.offer.*`` or a preset)."""

    gpu: Optional[str] = None
    """Substring of the GPU model, case-insensitive ("4090", "A100")."""
    num_gpus: Optional[int] = 1
    num_gpus_exact: bool = True
    """False: ``num_gpus`` is a minimum (preset ``finetune-40g``: >= 2)."""
    min_gpu_ram_gb: Optional[float] = None
    min_reliability: Optional[float] = None
    max_price_per_hour: Optional[float] = None
    regions: Tuple[str, ...] = ()
    """Any of these (substring, case-insensitive) of the offer's region."""
    preset: Optional[str] = None

    def matches(self, offer: Offer) -> Tuple[bool, str]:
        """(ok, why not) for one offer: the filters applied client-side for every provider,
        so a provider API that ignores a filter cannot hand back a wrong machine."""
        if self.gpu and _norm(self.gpu) not in _norm(offer.gpu):
            return False, f"gpu {offer.gpu!r} is not {self.gpu!r}"
        if self.num_gpus is not None:
            if self.num_gpus_exact and offer.num_gpus != self.num_gpus:
                return False, f"{offer.num_gpus} GPUs, want {self.num_gpus}"
            if not self.num_gpus_exact and offer.num_gpus < self.num_gpus:
                return False, f"{offer.num_gpus} GPUs, want >= {self.num_gpus}"
        if self.min_gpu_ram_gb is not None and (offer.gpu_ram_gb or 0) < self.min_gpu_ram_gb:
            return False, f"{offer.gpu_ram_gb} GB per GPU, want >= {self.min_gpu_ram_gb}"
        if self.min_reliability is not None and offer.reliability is not None \
                and offer.reliability < self.min_reliability:
            return False, f"reliability {offer.reliability}, want >= {self.min_reliability}"
        if self.max_price_per_hour is not None and offer.price_per_hour > self.max_price_per_hour:
            return False, f"${offer.price_per_hour}/h, want <= ${self.max_price_per_hour}"
        if self.regions:
            region = (offer.region or "").lower()
            if not any(r.lower() in region for r in self.regions):
                return False, f"region {offer.region!r} not in {list(self.regions)}"
        return True, ""

    def as_dict(self) -> Dict[str, Any]:
        return {"preset": self.preset, "gpu": self.gpu, "num_gpus": self.num_gpus,
                "num_gpus_exact": self.num_gpus_exact, "min_gpu_ram_gb": self.min_gpu_ram_gb,
                "min_reliability": self.min_reliability, "max_price_per_hour": self.max_price_per_hour,
                "regions": list(self.regions)}


@dataclass(frozen=True)
class CreateRequest:
    """Everything ``create`` needs besides the offer; no secrets."""

    name: str
    """Pod name / label: ``<project>-<random>``; used to find a pod whose id the API lost."""
    image: Optional[str] = None
    template_id: Optional[str] = None
    disk_gb: int = 50
    volume: Optional[str] = None
    public_key: Optional[str] = None
    """The OpenSSH public key line the pod must authorize."""
    ssh_user: Optional[str] = None
    ttl_hours: Optional[float] = None


class OfferUnavailable(Exception):
    """The offer was taken between search and rent (Vast ``no_such_ask``, RunPod 400
    no capacity, Lium executor busy): ``pod-up`` moves on to the next one."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PodGone(ProviderError):
    """The provider does not know this pod (destroyed, or another account's)."""


#: Exceptions an API call may raise that are worth repeating (set per provider).
Transient = Tuple[type, ...]


def env_key(name: str, provider: str) -> str:
    """An API key from the process environment only; a clear error when missing."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{provider}: {name} is not set",
                          hint=f"export {name}=... (API keys come from the environment only, never from config files)")
    return value


def import_sdk(module: str, provider: str, extra: str):
    """Import an optional SDK inside the client that needs it; a missing one names the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{provider}: the '{module}' package is not installed ({exc})",
                          hint=f"pip install 'podflow[{extra}]'") from None


class Provider(abc.ABC):
    """One place a pod can come from. Subclasses set ``name`` and the capability flags
    and implement the actions they have; the rest raise ``UnsupportedAction``."""

    name: ClassVar[str] = "?"
    #: provider's state word (lower-cased) -> PodState
    status_map: ClassVar[Mapping[str, PodState]] = {}
    can_create: ClassVar[bool] = False
    can_stop: ClassVar[bool] = False
    can_start: ClassVar[bool] = False
    can_destroy: ClassVar[bool] = False
    #: the SSH user when neither the API nor ``pod.user`` names one
    default_user: ClassVar[Optional[str]] = None
    #: rents several pods on one private network (``create_cluster``)
    can_cluster: ClassVar[bool] = False
    #: rents one more pod onto a network it made (``join_cluster``): a down member replaced
    can_grow_cluster: ClassVar[bool] = False
    #: why a network of this provider cannot take one more pod (the hint of the refusal)
    cannot_grow_cluster: ClassVar[str] = "this provider's networks have a fixed set of pods"

    #: API retry bound: attempts and the longest single wait (seconds)
    retry_attempts: ClassVar[int] = 4
    retry_wait_max: ClassVar[float] = 2.0
    retry_wait_first: ClassVar[float] = 0.2

    def __init__(self, config):
        self.config = config

    # ---- helpers shared by all providers -------------------------------------------

    def map_state(self, raw: Optional[str]) -> PodState:
        if not raw:
            return PodState.UNKNOWN
        return self.status_map.get(str(raw).lower(), PodState.UNKNOWN)

    def unsupported(self, action: str, hint: Optional[str] = None) -> UnsupportedAction:
        return UnsupportedAction(self.name, action, hint=hint)

    def is_transient(self, exc: BaseException) -> bool:
        """Whether an exception from an API call is worth retrying (5xx, connection)."""
        return False

    def describe_error(self, exc: BaseException) -> str:
        """A user-facing message for an API exception (never including a secret)."""
        return f"{type(exc).__name__}: {exc}"

    def api(self, what: str, fn: Callable, *args, **kwargs):
        """Call the provider API; transient failures retried with exponential backoff
        within ``retry_attempts``, then ``ProviderError`` (exit 4)."""
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=self.retry_wait_first, max=self.retry_wait_max),
            retry=retry_if_exception(self.is_transient),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return fn(*args, **kwargs)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise ProviderError(self.name, f"{what} failed after {self.retry_attempts} attempts: "
                                           f"{self.describe_error(last)}",
                                hint="the provider API keeps failing; try again later") from None
        except (ProviderError, UnsupportedAction, OfferUnavailable, ConfigError):
            raise

    # ---- the contract ----------------------------------------------------------------

    def search_offers(self, spec: OfferSpec) -> List[Offer]:
        """Offers matching ``spec``, cheapest first."""
        raise self.unsupported("offers", hint="this provider has no market; set pod.host or pod.target")

    def create(self, offer: Offer, request: CreateRequest) -> PodInfo:
        """Rent ``offer``. Raises ``OfferUnavailable`` when it was taken meanwhile."""
        raise self.unsupported("create", hint="use an existing machine (pod.host / pod.target)")

    def get(self, pod_id: str) -> PodInfo:
        """The pod's current info; ``PodGone`` when the provider no longer has it."""
        raise self.unsupported("get")

    def find(self, target: str) -> PodInfo:
        """An existing pod by id or name (``pod.target``)."""
        for pod in self.list():
            if target in (pod.id, pod.name):
                return pod
        raise PodGone(self.name, f"no pod with id or name {target!r}", hint=f"'wf pod-status' or the {self.name} console lists your pods")

    def list(self) -> List[PodInfo]:
        """Every pod of this account on this provider."""
        raise self.unsupported("list")

    def stop(self, pod_id: str) -> None:
        """Stop (keep the disk, stop GPU billing)."""
        raise self.unsupported("stop", hint="use 'wf pod-down --destroy'")

    def start(self, pod_id: str) -> None:
        """Start a stopped pod again."""
        raise self.unsupported("start")

    def destroy(self, pod_id: str) -> None:
        """Destroy for good (all data on the pod is lost). Idempotent: a pod already gone is fine."""
        raise self.unsupported("destroy", hint="this provider does not own the machine; nothing to destroy")

    # ---- several pods on one private network (pod.network: cluster) ----------------

    def search_cluster_offers(self, spec: OfferSpec, count: int) -> List[Offer]:
        """Offers of ``count`` pods on one private network; ``price_per_hour`` is for all of them."""
        raise self.unsupported("pod.network: cluster")

    def create_cluster(self, offer: Offer, request: CreateRequest, count: int) -> Cluster:
        """Rent ``count`` pods of ``offer`` on one private network, or nothing: on a failure
        midway, what this attempt created is destroyed before the error is raised.
        ``OfferUnavailable`` when the capacity went meanwhile."""
        raise self.unsupported("pod.network: cluster")

    def destroy_cluster(self, cluster: Cluster) -> None:
        """End every pod of the cluster and the network itself. Idempotent."""
        raise self.unsupported("pod.network: cluster")

    def member_offers(self, cluster: Cluster, spec: OfferSpec) -> List[Offer]:
        """Offers a pod could be rented from that ``join_cluster`` can put on ``cluster``'s
        network (Vast: asks of the overlay's physical cluster). ``PodGone`` when the network
        itself is gone."""
        raise self.unsupported("adding a pod to a private network", hint=self.cannot_grow_cluster)

    def join_cluster(self, cluster: Cluster, offer: Offer, request: CreateRequest) -> PodInfo:
        """Rent one pod of ``offer`` onto ``cluster``'s network, or nothing: a pod rented but
        not joined is destroyed before the error is raised. ``OfferUnavailable`` as ``create``."""
        raise self.unsupported("adding a pod to a private network", hint=self.cannot_grow_cluster)

    def stop_unsupported_reason(self, pod: Optional[PodInfo]) -> Optional[str]:
        """Why this pod can only be destroyed, or None when ``stop`` works for it."""
        return None if self.can_stop else f"{self.name} pods cannot be stopped, only destroyed"

    def ssh_user(self) -> Optional[str]:
        return self.config.pod.user or self.default_user

    def identity_file(self) -> Optional[str]:
        return self.config.pod.identity_file or None

    def with_user(self, endpoints: Sequence[Endpoint]) -> Tuple[Endpoint, ...]:
        """Endpoints with ``pod.user`` (or the provider default) and ``pod.identity_file`` filled in."""
        out = []
        for e in endpoints:
            user = self.config.pod.user or e.user or self.default_user
            out.append(replace(e, user=user, identity_file=e.identity_file or self.identity_file()))
        return tuple(out)


def parse_time(value: Any) -> Optional[float]:
    """Epoch seconds from an epoch number or an ISO 8601 string; None when unparsable."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime, timezone

    text = str(value).strip().replace("Z", "+00:00")
    for fmt in (None, "%Y-%m-%d %H:%M:%S"):
        try:
            dt = datetime.fromisoformat(text) if fmt is None else datetime.strptime(text, fmt)
        except ValueError:
            continue
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    return None


def now() -> float:
    return time.time()


class FixedHostProvider(Provider):
    """A pod that simply exists (this machine, a host you own): one pod, always the same,
    never created, stopped or destroyed. Subclasses build it in ``_pod``."""

    @abc.abstractmethod
    def _pod(self) -> PodInfo:
        """The one pod."""

    def get(self, pod_id: str) -> PodInfo:
        return self._pod()

    def list(self) -> List[PodInfo]:
        return [self._pod()]

    def find(self, target: str) -> PodInfo:
        return self._pod()
