"""Vast.ai through the ``vastai`` SDK (``pip install 'podflow[vastai]'``).

The API's quirks (seed 001) are normalised here and nowhere else:

- the instance id after a rent is in ``new_contract``, or ``instances.id``, or neither
  (then the instance is found by its label);
- instance responses are wrapped in ``instances`` (sometimes a list);
- the IP is ``public_ipaddr`` (``public_ip`` accepted too);
- the state is ``actual_status`` / ``cur_state`` / ``status``;
- SSH: the direct port (``ports["22/tcp"]`` on ``public_ipaddr``) first, then the
  proxy (``ssh_host``:``ssh_port``, e.g. ``ssh2.vast.ai``); the user is ``root``;
- an offer taken meanwhile answers ``no_such_ask`` (404).

Overlay networks (``pod.network: cluster``), as Vast's guide "Multi-Node training using
Torch + NCCL" (docs.vast.ai) and the ``vastai`` SDK (``vastai/api/clusters.py``) give them:
an overlay lives on one *physical cluster* (machines of one host on one LAN); offers carry
their ``cluster_id`` (``search offers cluster_id!=None`` lists them); ``create overlay
CLUSTER_ID NAME`` is ``POST /api/v0/overlay/ {"cluster_id", "name"}``; ``join overlay NAME
INSTANCE_ID`` is ``PUT /api/v0/overlay/ {"name", "instance_id"}``; ``show overlays`` is
``GET /api/v0/overlay/`` (``overlay_id``, ``name``, ``internal_subnet``, ``cluster_id``,
``instances``); ``delete overlay`` is ``DELETE /api/v0/overlay/ {"overlay_name"}``. Inside a
joined instance the overlay is ``eth0`` (the agent's ``net.addr`` reads it). A member that
died is replaced by renting another ask of the overlay's physical cluster
(``search offers cluster_id=N``) and joining it to the same overlay (``join_cluster``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Dict, List, Optional

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
    import_sdk,
    parse_time,
)
from workflow.transport.endpoint import Endpoint

DEFAULT_IMAGE = "pytorch/pytorch:latest"


def unwrap(resp: Any) -> Any:
    """``{"instances": X}`` -> X; a one-element list -> its element."""
    if isinstance(resp, dict) and "instances" in resp and not {"id", "actual_status"} & set(resp):
        resp = resp["instances"]
    if isinstance(resp, list):
        resp = resp[0] if resp else None
    return resp


def instance_id_from(resp: Any) -> Optional[str]:
    """The new instance's id from a rent answer, wherever this answer put it."""
    if not isinstance(resp, dict):
        return None
    for key in ("new_contract", "instance_id", "id"):
        if resp.get(key) not in (None, "", False):
            return str(resp[key])
    inner = resp.get("instances")
    if isinstance(inner, dict) and inner.get("id") is not None:
        return str(inner["id"])
    if isinstance(inner, list) and inner and isinstance(inner[0], dict) and inner[0].get("id") is not None:
        return str(inner[0]["id"])
    return None


def raw_state(inst: Dict[str, Any]) -> str:
    return str(inst.get("actual_status") or inst.get("cur_state") or inst.get("status") or "")


def ssh_endpoints(inst: Dict[str, Any]) -> List[Endpoint]:
    """Direct port first, then Vast's SSH proxy."""
    out: List[Endpoint] = []
    ip = inst.get("public_ipaddr") or inst.get("public_ip")
    ports = inst.get("ports") or {}
    mapping = ports.get("22/tcp") if isinstance(ports, dict) else None
    if ip and mapping:
        first = mapping[0] if isinstance(mapping, list) else mapping
        host_port = first.get("HostPort") if isinstance(first, dict) else first
        if host_port:
            out.append(Endpoint(host=str(ip).strip(), port=int(host_port)))
    if inst.get("ssh_host") and inst.get("ssh_port"):
        proxy = Endpoint(host=str(inst["ssh_host"]).strip(), port=int(inst["ssh_port"]))
        if proxy not in out:
            out.append(proxy)
    return out


class VastProvider(Provider):
    name = "vastai"
    can_create = can_stop = can_start = can_destroy = can_cluster = can_grow_cluster = True
    default_user = "root"
    status_map = {
        "running": PodState.RUNNING,
        "loading": PodState.STARTING,
        "created": PodState.PENDING,
        "scheduling": PodState.PENDING,
        "creating": PodState.PENDING,
        "exited": PodState.STOPPED,
        "stopped": PodState.STOPPED,
        "inactive": PodState.STOPPED,
        "offline": PodState.ERROR,
        "error": PodState.ERROR,
        "destroyed": PodState.TERMINATED,
        "deleted": PodState.TERMINATED,
    }

    def __init__(self, config):
        super().__init__(config)
        self._sdk = None

    @property
    def sdk(self):
        if self._sdk is None:
            vastai = import_sdk("vastai", self.name, "vastai")
            key = env_key("VAST_API_KEY", self.name)
            self._sdk = vastai.VastAI(api_key=key, server_url=os.environ.get("VAST_URL") or None,
                                      raw=True, quiet=True)
        return self._sdk

    # ---- errors ------------------------------------------------------------------

    @staticmethod
    def _status(exc: BaseException) -> Optional[int]:
        resp = getattr(exc, "response", None)
        return getattr(resp, "status_code", None)

    @staticmethod
    def _body(exc: BaseException) -> Dict[str, Any]:
        resp = getattr(exc, "response", None)
        try:
            doc = resp.json()
            return doc if isinstance(doc, dict) else {}
        except Exception:
            return {}

    def is_transient(self, exc: BaseException) -> bool:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
        status = self._status(exc)
        return status is not None and (status >= 500 or status == 429)

    def describe_error(self, exc: BaseException) -> str:
        status = self._status(exc)
        if status is not None:
            body = self._body(exc)
            msg = body.get("msg") or body.get("error") or ""
            return f"HTTP {status}{': ' + str(msg) if msg else ''}"
        return f"{type(exc).__name__}: {exc}"

    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        try:
            return self.api(what, fn, *args, **kwargs)
        except requests.RequestException as exc:
            if self._status(exc) == 404:
                raise PodGone(self.name, f"{what}: not found") from None
            raise ProviderError(self.name, f"{what} failed: {self.describe_error(exc)}") from None

    # ---- contract ----------------------------------------------------------------

    def _rows(self, spec: OfferSpec, **extra: Any) -> List[Dict[str, Any]]:
        query: Dict[str, Any] = dict(extra)
        if spec.num_gpus is not None:
            query["num_gpus"] = {"eq" if spec.num_gpus_exact else "gte": spec.num_gpus}
        if spec.min_gpu_ram_gb is not None:
            query["gpu_ram"] = {"gte": spec.min_gpu_ram_gb * 1000}  # MB, as the CLI's offers_mult
        if spec.min_reliability is not None:
            query["reliability2"] = {"gte": spec.min_reliability}
        if spec.max_price_per_hour is not None:
            query["dph_total"] = {"lte": spec.max_price_per_hour}
        if spec.gpu:
            query["gpu_name"] = {"eq": spec.gpu.replace("_", " ")}
        rows = self._call("search offers", self.sdk.search_offers, query=query, order="dph_total",
                          limit=64, storage=float(self.config.pod.disk_gb or 10))
        return [r for r in rows or [] if isinstance(r, dict)]

    def _offer(self, row: Dict[str, Any]) -> Optional[Offer]:
        try:
            return Offer(
                provider=self.name, id=str(row["id"]), gpu=str(row.get("gpu_name") or ""),
                num_gpus=int(row.get("num_gpus") or 0),
                price_per_hour=float(row.get("dph_total") or row.get("dph") or 0.0),
                gpu_ram_gb=(float(row["gpu_ram"]) / 1000.0) if row.get("gpu_ram") is not None else None,
                reliability=_float(row.get("reliability2", row.get("reliability"))),
                region=(str(row.get("geolocation")).strip() if row.get("geolocation") else None),
                description=f"machine {row.get('machine_id', '?')}, {row.get('cpu_name') or 'cpu ?'}",
            )
        except (KeyError, TypeError, ValueError):
            return None

    def search_offers(self, spec: OfferSpec) -> List[Offer]:
        return [o for o in map(self._offer, self._rows(spec)) if o is not None]

    # ---- overlay networks (pod.network: cluster) -----------------------------------

    def search_cluster_offers(self, spec: OfferSpec, count: int) -> List[Offer]:
        """One offer per physical cluster holding ``count`` matching asks: the cheapest
        ``count`` make its price; every matching ask of it is a member (spares for asks
        taken meanwhile)."""
        by_cluster: Dict[str, List[Offer]] = {}
        for row in self._rows(spec, cluster_id={"neq": None}):
            offer = self._offer(row)
            if offer is not None and row.get("cluster_id") is not None and spec.matches(offer)[0]:
                by_cluster.setdefault(str(row["cluster_id"]), []).append(offer)
        out = []
        for cid, asks in by_cluster.items():
            if len(asks) < count:
                continue
            asks.sort(key=lambda o: (o.price_per_hour, o.id))
            first = asks[0]
            out.append(replace(first, id=f"cluster-{cid}", members=tuple(o.id for o in asks),
                               price_per_hour=round(sum(o.price_per_hour for o in asks[:count]), 4),
                               description=f"{count} of {len(asks)} offers on physical cluster {cid}"))
        return out

    def create_cluster(self, offer: Offer, request: CreateRequest, count: int) -> Cluster:
        cluster_id = int(offer.id.rpartition("-")[2])
        overlay = request.name
        self._call(f"create overlay on cluster {cluster_id}", self.sdk.create_overlay, cluster_id, overlay)
        pods: List[PodInfo] = []
        try:
            for ask in offer.members:
                if len(pods) == count:
                    break
                try:
                    pod = self.create(replace(offer, id=ask, members=()), replace(request, name=f"{overlay}-{len(pods)}"))
                except OfferUnavailable:
                    continue
                pods.append(pod)
                self._call(f"join instance {pod.id} to overlay {overlay}", self.sdk.join_overlay, overlay, int(pod.id))
            if len(pods) < count:
                raise OfferUnavailable(f"physical cluster {cluster_id}: only {len(pods)} of {count} offers could be rented")
        except BaseException:
            self.destroy_cluster(Cluster(self.name, overlay, tuple(p.id for p in pods)))  # only what this attempt made
            raise
        return Cluster(self.name, overlay, tuple(p.id for p in pods),
                       price_per_hour=sum(p.price_per_hour or 0.0 for p in pods) or offer.price_per_hour)

    def _overlay(self, name: str) -> Dict[str, Any]:
        """The overlay named ``name`` (``show overlays``); PodGone when the account has none."""
        found = self._call("show overlays", self.sdk.show_overlays) or []
        for overlay in found if isinstance(found, list) else []:
            if isinstance(overlay, dict) and overlay.get("name") == name:
                return overlay
        raise PodGone(self.name, f"overlay network {name} no longer exists")

    def member_offers(self, cluster: Cluster, spec: OfferSpec) -> List[Offer]:
        physical = self._overlay(cluster.id).get("cluster_id")
        found = [o for o in map(self._offer, self._rows(spec, cluster_id={"eq": physical})) if o is not None]
        return sorted((o for o in found if spec.matches(o)[0]), key=lambda o: (o.price_per_hour, o.id))

    def join_cluster(self, cluster: Cluster, offer: Offer, request: CreateRequest) -> PodInfo:
        pod = self.create(offer, request)
        try:
            self._call(f"join instance {pod.id} to overlay {cluster.id}", self.sdk.join_overlay,
                       cluster.id, int(pod.id))
        except BaseException:
            self.destroy(pod.id)  # only what this attempt created
            raise
        return pod

    def destroy_cluster(self, cluster: Cluster) -> None:
        for pod_id in cluster.pod_ids:
            self.destroy(pod_id)
        try:
            self._call(f"delete overlay {cluster.id}", self.sdk.delete_overlay, overlay_identifier=cluster.id)
        except PodGone:
            pass

    def create(self, offer: Offer, request: CreateRequest) -> PodInfo:
        import requests

        try:
            resp = self.sdk.create_instance(
                id=int(offer.id), image=request.image or DEFAULT_IMAGE, disk=float(request.disk_gb),
                label=request.name, ssh=True, direct=True,
                template_hash=request.template_id or None,
            )
        except requests.RequestException as exc:
            body = self._body(exc)
            if self._status(exc) == 404 or "no_such_ask" in str(body.get("error", "")):
                raise OfferUnavailable(f"offer {offer.id} is gone ({body.get('error') or 'no_such_ask'})") from None
            if self.is_transient(exc):
                found = self._by_label(request.name)
                if found is None:
                    raise OfferUnavailable(f"rent of offer {offer.id} failed ({self.describe_error(exc)})") from None
                resp = {"new_contract": found}
            else:
                raise ProviderError(self.name, f"rent of offer {offer.id} failed: {self.describe_error(exc)}") from None
        if isinstance(resp, dict) and resp.get("success") is False:
            err = str(resp.get("error") or resp.get("msg") or "refused")
            raise OfferUnavailable(f"offer {offer.id}: {err}")
        pod_id = instance_id_from(resp) or self._by_label(request.name)
        if pod_id is None:
            raise ProviderError(self.name, f"rented offer {offer.id} but the API named no instance and none is labelled "
                                           f"{request.name!r}", hint="check 'vastai show instances' and destroy it if unwanted")
        try:
            if request.public_key:
                self._call("attach ssh key", self.sdk.attach_ssh, int(pod_id), request.public_key)
            return self.get(pod_id)
        except BaseException:
            self.destroy(pod_id)  # only what this attempt created
            raise

    def _by_label(self, label: str) -> Optional[str]:
        for inst in self._call("list instances", self.sdk.show_instances) or []:
            if isinstance(inst, dict) and inst.get("label") == label:
                return str(inst.get("id"))
        return None

    def _info(self, inst: Dict[str, Any]) -> PodInfo:
        raw = raw_state(inst)
        return PodInfo(
            provider=self.name, id=str(inst.get("id")), name=str(inst.get("label") or ""),
            state=self.map_state(raw), raw_state=raw, endpoints=self.with_user(ssh_endpoints(inst)),
            price_per_hour=_float(inst.get("dph_total")), gpu=str(inst.get("gpu_name") or ""),
            num_gpus=inst.get("num_gpus"), created_at=parse_time(inst.get("start_date")),
            started_at=parse_time(inst.get("start_date")), has_volume=True,
        )

    def get(self, pod_id: str) -> PodInfo:
        inst = unwrap(self._call(f"show instance {pod_id}", self.sdk.show_instance, int(pod_id)))
        if not inst:
            raise PodGone(self.name, f"instance {pod_id} not found")
        return self._info(inst)

    def list(self) -> List[PodInfo]:
        return [self._info(i) for i in self._call("list instances", self.sdk.show_instances) or [] if isinstance(i, dict)]

    def stop(self, pod_id: str) -> None:
        self._call(f"stop instance {pod_id}", self.sdk.stop_instance, int(pod_id))

    def start(self, pod_id: str) -> None:
        self._call(f"start instance {pod_id}", self.sdk.start_instance, int(pod_id))

    def destroy(self, pod_id: str) -> None:
        try:
            self._call(f"destroy instance {pod_id}", self.sdk.destroy_instance, int(pod_id))
        except PodGone:
            pass

    def stop_unsupported_reason(self, pod: Optional[PodInfo]) -> Optional[str]:
        if pod is not None and pod.cluster_id:
            return (f"this instance is on Vast overlay network {pod.cluster_id}: 'wf pod-down' stops none of its "
                    "pods alone; they end together ('wf pod-down --destroy', which also deletes the overlay). "
                    "Its watchdog (autostop, pod.ttl, pod.max_cost_usd) acts on this instance only")
        return None


def _float(v) -> Optional[float]:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
