"""RunPod over its REST API v2, plain HTTP (stdlib ``urllib``; no SDK).

Base URL ``https://api.runpod.io`` (paths ``/v2/...``), or ``RUNPOD_API_BASE_URL``.
An "offer" is a GPU type from ``GET /v2/catalog/gpus`` in one cloud (SECURE or
COMMUNITY). ``POST /v2/pods`` takes a strict body (unknown fields are refused) with
``ports`` holding ``22/tcp``, ``startSsh`` and env ``PUBLIC_KEY``; a GPU type without
capacity answers 400. ``runtime`` and ``ssh.direct`` are null until the pod is
RUNNING; only the direct endpoint (the public mapping of port 22) can run commands —
the ``ssh.proxy`` carries an interactive shell only. Lifecycle: ``POST
/v2/pods/{id}/action {"action": "start|stop|restart|terminate"}``, ``DELETE
/v2/pods/{id}``. Errors are RFC 9457 problem objects (``title``, ``status``, ``detail``).

Instant clusters (``pod.network: cluster``), as the same OpenAPI file
(``runpod/docs`` ``api-reference-v2/openapi.json``, tag ``Clusters``) documents them:

- ``POST /v2/clusters`` ``CreateClusterRequest``: ``name``, ``type`` (``TRAINING``),
  ``compute: {gpuTypeId, gpuCountPerPod, podCount}`` (``podCount`` 2..250), the container
  configuration of every pod (``image``, ``disk``, ``ports``, ``env``), ``startSsh``,
  ``dataCenterIds`` (a cluster is always in one data center); 201 with the ``Cluster``
  (``id``, ``pods: {total, byStatus}``, ``network: {cidr}``, ``primary``). Strict
  (``unevaluatedProperties: false``); capacity is per product: the catalog's
  ``product=CLUSTER`` availability.
- ``GET /v2/clusters/{id}/pods`` -> ``{"pods": [Pod]}``, each member a full ``Pod`` whose
  ``cluster`` is ``{id, rank, ip}``: ``rank`` is its NODE_RANK (0: the primary), ``ip`` its
  address on the cluster's private overlay (omitted until assigned). Inside each pod
  RunPod sets ``PRIMARY_ADDR``, ``NODE_ADDR``, ``NODE_RANK``, ``NUM_NODES`` (docs
  "Instant Clusters"; the private network is on the ``ens*`` interfaces, never ``eth0``).
- ``DELETE /v2/clusters/{id}`` (204) terminates every member pod. Member pods cannot be
  stopped, modified or deleted through ``/v2/pods`` (409), and ``GET /v2/pods`` leaves
  them out unless ``includeClusterPods=true``. Nothing adds a pod to a cluster, so a member
  that died cannot be replaced (``cannot_grow_cluster`` says what to do instead).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from workflow import __version__
from workflow.errors import ProviderError
from workflow.providers.base import (
    Cluster,
    CreateRequest,
    Offer,
    OfferSpec,
    OfferUnavailable,
    PodGone,
    PodInfo,
    PodState,
    Provider,
    env_key,
    parse_time,
)
from workflow.transport.endpoint import Endpoint

DEFAULT_BASE = "https://api.runpod.io"
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
VOLUME_PATH = "/workspace"


class RunpodHttpError(Exception):
    """A non-2xx answer, with the problem object's fields."""

    def __init__(self, status: int, title: str = "", detail: str = "", errors: Optional[list] = None):
        self.status, self.title, self.detail, self.errors = status, title, detail, errors or []
        super().__init__(f"HTTP {status} {title}: {detail}".strip())


def base_url() -> str:
    base = (os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE).rstrip("/")
    if base.endswith("/v2"):
        base = base[: -len("/v2")]
    return base


class RunpodApi:
    """The few REST v2 calls podflow needs."""

    def __init__(self, key: str, base: Optional[str] = None, timeout: float = 30.0):
        self._key = key
        self.base = base or base_url()
        self.timeout = timeout

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                query: Optional[Dict[str, Any]] = None) -> Any:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": f"podflow/{__version__}",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read() or b""
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
            if not isinstance(doc, dict):
                doc = {}
            raise RunpodHttpError(exc.code, str(doc.get("title") or exc.reason or ""),
                                  str(doc.get("detail") or ""), doc.get("errors")) from None
        if not raw:
            return None
        return json.loads(raw)


def _public(ip: str) -> bool:
    try:
        return not ipaddress.ip_address(ip).is_private
    except ValueError:
        return True  # a hostname


def ssh_endpoints(pod: Dict[str, Any], *, allow_private: bool = False) -> List[Endpoint]:
    """The direct SSH endpoint: ``ssh.direct``, else the runtime mapping of private port 22
    that is public (``isIpPublic`` in the older shape). Nothing while ``runtime`` is null."""
    out: List[Endpoint] = []
    direct = ((pod.get("ssh") or {}).get("direct")) if isinstance(pod.get("ssh"), dict) else None
    if isinstance(direct, dict) and direct.get("host") and direct.get("port"):
        out.append(Endpoint(host=str(direct["host"]), port=int(direct["port"]), user=direct.get("username") or None))
    runtime = pod.get("runtime")
    if isinstance(runtime, dict):
        for p in runtime.get("ports") or []:
            if not isinstance(p, dict):
                continue
            private = p.get("private", p.get("privatePort"))
            public = p.get("public", p.get("publicPort"))
            ip = p.get("ip")
            is_public = p.get("isIpPublic")
            if is_public is None:
                is_public = bool(ip) and (allow_private or _public(str(ip)))
            if int(private or 0) == 22 and public and ip and is_public and str(p.get("type", "tcp")).lower() == "tcp":
                ep = Endpoint(host=str(ip), port=int(public))
                if all((e.host, e.port) != (ep.host, ep.port) for e in out):
                    out.append(ep)
    return out


class RunpodProvider(Provider):
    name = "runpod"
    can_create = can_stop = can_start = can_destroy = can_cluster = True
    cannot_grow_cluster = ("a RunPod instant cluster keeps the pods it was created with: its API creates and "
                           "deletes clusters whole and adds no pod to one. Its runs go to the pods that are "
                           "up (pool.recover); for a whole cluster again: 'wf fetch-all', 'wf pod-down "
                           "--destroy', 'wf pod-up'")
    #: how long the member pods of a new cluster may take to be listed with their ranks
    cluster_listing_secs = 120.0
    default_user = "root"
    status_map = {
        "provisioning": PodState.PENDING,
        "starting": PodState.STARTING,
        "running": PodState.RUNNING,
        "exited": PodState.STOPPED,
        "error": PodState.ERROR,
        "terminated": PodState.TERMINATED,
    }

    def __init__(self, config):
        super().__init__(config)
        self._api = None

    @property
    def http(self) -> RunpodApi:
        if self._api is None:
            self._api = RunpodApi(env_key("RUNPOD_API_KEY", self.name))
        return self._api

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, RunpodHttpError):
            return exc.status >= 500 or exc.status == 429
        return isinstance(exc, (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError))

    def describe_error(self, exc: BaseException) -> str:
        if isinstance(exc, RunpodHttpError):
            extra = f" ({'; '.join(map(str, exc.errors))})" if exc.errors else ""
            return f"HTTP {exc.status} {exc.title}: {exc.detail}{extra}"
        return f"{type(exc).__name__}: {exc}"

    def _call(self, what: str, method: str, path: str, **kw) -> Any:
        try:
            return self.api(what, self.http.request, method, path, **kw)
        except RunpodHttpError as exc:
            if exc.status == 404:
                raise PodGone(self.name, f"{what}: {exc.detail or 'not found'}") from None
            raise ProviderError(self.name, f"{what} failed: {self.describe_error(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ProviderError(self.name, f"{what} failed: {self.describe_error(exc)}") from None

    # ---- offers ----------------------------------------------------------------

    def search_offers(self, spec: OfferSpec) -> List[Offer]:
        count = spec.num_gpus or 1
        doc = self._call("list GPU types", "GET", "/v2/catalog/gpus",
                         query={"include": "AVAILABILITY", "product": "POD", "count": count})
        offers: List[Offer] = []
        for g in (doc or {}).get("gpus", []):
            if not isinstance(g, dict) or not g.get("id"):
                continue
            if g.get("availability") == "NONE":
                continue
            centers = [d for d in g.get("dataCenters") or [] if isinstance(d, dict) and d.get("availability") != "NONE"]
            region = ",".join(str(d.get("id")) for d in centers) or None
            for cloud in ("SECURE", "COMMUNITY"):
                key = cloud.lower()
                price = (g.get("price") or {}).get(key)
                if not g.get(key) or price is None:
                    continue
                max_count = (g.get("maxCount") or {}).get(key)
                if max_count is not None and count > int(max_count):
                    continue
                offers.append(Offer(
                    provider=self.name, id=f"{g['id']}@{cloud}", gpu=str(g.get("name") or g["id"]), num_gpus=count,
                    price_per_hour=round(float(price) * count, 4), gpu_ram_gb=_float(g.get("memory")),
                    reliability=None, region=region,
                    description=f"{cloud.lower()} cloud, {g.get('availability', '?')} availability",
                ))
        return offers

    # ---- lifecycle -------------------------------------------------------------

    def _mounts(self, volume: Any) -> Optional[Dict[str, Any]]:
        if volume in (None, "", False):
            return None
        if isinstance(volume, (int, float)) and not isinstance(volume, bool):
            return {"persistent": {"size": int(volume), "path": VOLUME_PATH}}
        if isinstance(volume, dict):
            if volume.get("id") or volume.get("volumeId"):
                return {"network": [{"volumeId": str(volume.get("id") or volume.get("volumeId")),
                                     "path": str(volume.get("path") or VOLUME_PATH)}]}
            return {"persistent": {"size": int(volume.get("size") or 20), "path": str(volume.get("path") or VOLUME_PATH)}}
        return {"network": [{"volumeId": str(volume), "path": VOLUME_PATH}]}

    def create_body(self, offer: Offer, request: CreateRequest) -> Dict[str, Any]:
        gpu_id, _, cloud = offer.id.rpartition("@")
        body: Dict[str, Any] = {
            "name": request.name,
            "cloud": cloud or "SECURE",
            "gpu": {"id": gpu_id or offer.id, "count": int(offer.num_gpus or 1)},
            "disk": int(request.disk_gb),
            "ports": ["22/tcp"],
            "startSsh": True,
        }
        if request.template_id:
            body["templateId"] = request.template_id
            if request.image:
                body["image"] = request.image
        else:
            body["image"] = request.image or DEFAULT_IMAGE
        if request.public_key:
            body["env"] = {"PUBLIC_KEY": request.public_key}
        mounts = self._mounts(request.volume)
        if mounts:
            body["mounts"] = mounts
        regions = list(self.config.pod.offer.regions or [])
        if regions and offer.region:
            centers = [c for c in offer.region.split(",") if any(r.lower() in c.lower() for r in regions)]
            if centers:
                body["dataCenterIds"] = centers
        return body

    def create(self, offer: Offer, request: CreateRequest) -> PodInfo:
        body = self.create_body(offer, request)
        try:
            pod = self.http.request("POST", "/v2/pods", body)
        except RunpodHttpError as exc:
            if exc.status == 400:
                raise OfferUnavailable(f"{offer.gpu} ({offer.id}): {exc.detail or 'no capacity'}") from None
            if self.is_transient(exc):
                found = self._by_name(request.name)
                if found is None:
                    raise OfferUnavailable(f"create on {offer.id} failed ({self.describe_error(exc)})") from None
                return found
            raise ProviderError(self.name, f"create pod failed: {self.describe_error(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            found = self._by_name(request.name)
            if found is None:
                raise ProviderError(self.name, f"create pod failed: {self.describe_error(exc)}") from None
            return found
        if not isinstance(pod, dict) or not pod.get("id"):
            found = self._by_name(request.name)
            if found is None:
                raise ProviderError(self.name, "create pod answered without a pod id",
                                    hint="check the RunPod console for a pod named " + request.name)
            return found
        return self._info(pod)

    def _by_name(self, name: str) -> Optional[PodInfo]:
        for pod in self.list():
            if pod.name == name:
                return pod
        return None

    def _info(self, pod: Dict[str, Any]) -> PodInfo:
        raw = str(pod.get("status") or "")
        mounts = pod.get("mounts") or {}
        has_volume = bool(mounts.get("persistent") or mounts.get("network")) if isinstance(mounts, dict) else None
        gpu = pod.get("gpu") or {}
        member = pod.get("cluster") if isinstance(pod.get("cluster"), dict) else {}
        allow_private = bool(os.environ.get("RUNPOD_API_BASE_URL"))  # self-hosted gateways and tests
        return PodInfo(
            provider=self.name, id=str(pod.get("id")), name=str(pod.get("name") or ""),
            state=self.map_state(raw), raw_state=raw,
            endpoints=self.with_user(ssh_endpoints(pod, allow_private=allow_private)),
            price_per_hour=_float(pod.get("cost")), gpu=str(gpu.get("id") or ""),
            num_gpus=gpu.get("count"), created_at=parse_time(pod.get("createdAt")),
            started_at=parse_time(pod.get("startedAt")), has_volume=has_volume,
            cluster_id=str(member["id"]) if member.get("id") else None,
            private_addr=str(member["ip"]) if member.get("ip") else None,
        )

    def get(self, pod_id: str) -> PodInfo:
        pod = self._call(f"get pod {pod_id}", "GET", f"/v2/pods/{urllib.parse.quote(pod_id, safe='')}")
        if not isinstance(pod, dict) or pod.get("status") == "TERMINATED":
            raise PodGone(self.name, f"pod {pod_id} is terminated")
        return self._info(pod)

    def list(self) -> List[PodInfo]:
        doc = self._call("list pods", "GET", "/v2/pods", query={"includeClusterPods": "true"})  # every pod
        return [self._info(p) for p in (doc or {}).get("pods", []) if isinstance(p, dict)]

    def _action(self, pod_id: str, action: str) -> None:
        self._call(f"{action} pod {pod_id}", "POST", f"/v2/pods/{urllib.parse.quote(pod_id, safe='')}/action",
                   body={"action": action})

    def stop(self, pod_id: str) -> None:
        self._action(pod_id, "stop")

    def start(self, pod_id: str) -> None:
        self._action(pod_id, "start")

    def destroy(self, pod_id: str) -> None:
        try:
            self._call(f"delete pod {pod_id}", "DELETE", f"/v2/pods/{urllib.parse.quote(pod_id, safe='')}")
        except PodGone:
            pass

    # ---- instant clusters (pod.network: cluster) ----------------------------------

    def search_cluster_offers(self, spec: OfferSpec, count: int) -> List[Offer]:
        per_pod = spec.num_gpus or 1
        doc = self._call("list GPU types", "GET", "/v2/catalog/gpus",
                         query={"include": "AVAILABILITY", "product": "CLUSTER", "count": per_pod})
        offers: List[Offer] = []
        for g in (doc or {}).get("gpus", []):
            price = (g.get("price") or {}).get("secure") if isinstance(g, dict) else None
            if not isinstance(g, dict) or not g.get("id") or g.get("availability") == "NONE" or price is None:
                continue
            max_count = (g.get("maxCount") or {}).get("secure")
            if max_count is not None and per_pod > int(max_count):
                continue
            centers = [d for d in g.get("dataCenters") or [] if isinstance(d, dict) and d.get("availability") != "NONE"]
            offers.append(Offer(
                provider=self.name, id=str(g["id"]), gpu=str(g.get("name") or g["id"]), num_gpus=per_pod,
                price_per_hour=round(float(price) * per_pod * count, 4), gpu_ram_gb=_float(g.get("memory")),
                region=",".join(str(d.get("id")) for d in centers) or None,
                description=f"instant cluster of {count} pods, {g.get('availability', '?')} availability"))
        return offers

    def create_cluster(self, offer: Offer, request: CreateRequest, count: int) -> Cluster:
        body: Dict[str, Any] = {
            "name": request.name, "type": "TRAINING",
            "compute": {"gpuTypeId": offer.id, "gpuCountPerPod": int(offer.num_gpus or 1), "podCount": int(count)},
            "image": request.image or DEFAULT_IMAGE, "disk": int(request.disk_gb), "ports": ["22/tcp"],
            "startSsh": True,
        }
        if request.public_key:
            body["env"] = {"PUBLIC_KEY": request.public_key}
        regions = list(self.config.pod.offer.regions or [])
        if regions and offer.region:
            centers = [c for c in offer.region.split(",") if any(r.lower() in c.lower() for r in regions)]
            if centers:
                body["dataCenterIds"] = centers
        try:
            doc = self.http.request("POST", "/v2/clusters", body)
        except RunpodHttpError as exc:
            if exc.status == 400:
                raise OfferUnavailable(f"{offer.gpu} x{count} pods: {exc.detail or 'no capacity'}") from None
            found = self._cluster_by_name(request.name) if self.is_transient(exc) else None
            if found is None:
                raise ProviderError(self.name, f"create cluster failed: {self.describe_error(exc)}") from None
            doc = found
        except (urllib.error.URLError, OSError) as exc:
            doc = self._cluster_by_name(request.name)
            if doc is None:
                raise ProviderError(self.name, f"create cluster failed: {self.describe_error(exc)}") from None
        if not isinstance(doc, dict) or not doc.get("id"):
            raise ProviderError(self.name, "create cluster answered without a cluster id",
                                hint="check the RunPod console for a cluster named " + request.name)
        cluster_id = str(doc["id"])
        try:
            pods = self._members(cluster_id, count)
        except BaseException:
            self.destroy_cluster(Cluster(self.name, cluster_id, ()))  # only what this attempt created
            raise
        return Cluster(self.name, cluster_id, tuple(p.id for p in pods),
                       price_per_hour=sum(p.price_per_hour or 0.0 for p in pods) or offer.price_per_hour)

    def _cluster_by_name(self, name: str) -> Optional[Dict[str, Any]]:
        doc = self._call("list clusters", "GET", "/v2/clusters")
        return next((c for c in (doc or {}).get("clusters", []) if isinstance(c, dict) and c.get("name") == name), None)

    def _members(self, cluster_id: str, count: int) -> List[PodInfo]:
        """The cluster's ``count`` member pods in rank order, once each has its rank."""
        deadline = time.monotonic() + self.cluster_listing_secs
        while True:
            doc = self._call(f"list pods of cluster {cluster_id}", "GET",
                             f"/v2/clusters/{urllib.parse.quote(cluster_id, safe='')}/pods")
            raw = [p for p in (doc or {}).get("pods", []) if isinstance(p, dict)]
            ranked = [p for p in raw if isinstance(p.get("cluster"), dict) and p["cluster"].get("rank") is not None]
            if len(ranked) >= count:
                ranked.sort(key=lambda p: int(p["cluster"]["rank"]))
                return [self._info(p) for p in ranked[:count]]
            if time.monotonic() > deadline:
                raise ProviderError(self.name, f"cluster {cluster_id} listed {len(ranked)} of {count} pods with a rank "
                                               f"after {self.cluster_listing_secs:.0f}s; it was deleted")
            time.sleep(1.0)

    def destroy_cluster(self, cluster: Cluster) -> None:
        try:
            self._call(f"delete cluster {cluster.id}", "DELETE", f"/v2/clusters/{urllib.parse.quote(cluster.id, safe='')}")
        except PodGone:
            pass

    def stop_unsupported_reason(self, pod: Optional[PodInfo]) -> Optional[str]:
        if pod is not None and pod.cluster_id:
            return (f"this pod belongs to RunPod instant cluster {pod.cluster_id}: its pods cannot be stopped, "
                    "only deleted together")
        if pod is not None and pod.has_volume is False:
            return ("this RunPod pod has no volume: stopping it would lose the container disk, so it can only "
                    "be destroyed (set pod.volume to keep data across stops)")
        return None


def _float(v) -> Optional[float]:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
