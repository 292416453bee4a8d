"""A fake Vast.ai API (the routes the ``vastai`` SDK calls), quirks included (seed 001).

- ``POST /api/v0/bundles/`` search -> ``{"offers": [...]}`` (``gpu_ram`` in MB, ``dph_total``,
  ``reliability2``, ``geolocation``)
- ``PUT /api/v0/asks/{id}/`` rent -> ``{"success": true, "new_contract": N}``, or per offer
  ``{"success": true, "instances": {"id": N}}``, or ``{"success": true}`` with no id at all
  (found by label); a snatched offer -> 404 ``{"error": "no_such_ask"}``; an ask rented here is
  no longer listed
- ``GET /api/v0/instances/{id}/`` -> wrapped in ``{"instances": {...}}``; the state in
  ``actual_status`` or (quirk) only ``cur_state``; ``public_ipaddr``; direct port in
  ``ports["22/tcp"]``; the proxy in ``ssh_host``/``ssh_port``
- ``GET /api/v1/instances/`` list, ``PUT /api/v0/instances/{id}/`` stop/start/label,
  ``DELETE /api/v0/instances/{id}/``, ``POST /api/v0/instances/{id}/ssh/`` attach a key
- inside each instance, ``CONTAINER_ID`` and an instance-scoped ``CONTAINER_API_KEY`` (as
  Vast sets them), accepted for that instance's own ``/api/v0/instances/{id}/`` only
- overlay networks (the SDK's ``vastai/api/clusters.py``): offers carry their physical
  ``cluster_id`` (null off a cluster; the search honours ``cluster_id: {neq|eq}``);
  ``POST /api/v0/overlay/ {cluster_id, name}``, ``PUT /api/v0/overlay/ {name, instance_id}``
  (only an instance on a machine of that cluster), ``GET /api/v0/overlay/`` (``overlay_id``,
  ``name``, ``internal_subnet``, ``cluster_id``, ``instances``), ``DELETE /api/v0/overlay/
  {overlay_name | overlay_id}``
"""

from __future__ import annotations

import re
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fakes.common import FakeApi, FakePod, Reply, Timeline


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VastOffer:
    id: int
    gpu_name: str = "RTX 4090"
    num_gpus: int = 1
    gpu_ram_gb: float = 24
    dph_total: float = 0.4
    reliability: float = 0.99
    geolocation: str = "US"
    snatched: bool = False
    """rented by someone else between search and rent"""
    id_quirk: str = "new_contract"
    """where the rent answer puts the id: new_contract | instances | none"""
    state_quirk: str = "actual_status"
    """which field carries the state: actual_status | cur_state"""
    direct_broken: bool = False
    """the direct port mapping leads nowhere (only the proxy works)"""
    cluster_id: Optional[int] = None
    """the physical cluster (one host's machines on one LAN) the machine is in"""
    rent_error: Optional[str] = None
    """renting it answers 400 with this error (an API failure)"""
    rented: bool = False
    """rented through this API: no longer listed by the search (nor rentable again)"""
    timeline: Timeline = field(default_factory=Timeline)


class VastPod:
    def __init__(self, iid: int, offer: VastOffer, fake: FakePod, label: str, image: str, container_key: str = ""):
        self.id, self.offer, self.fake, self.label, self.image = iid, offer, fake, label, image
        self.container_key = container_key
        """the instance-scoped API key Vast puts into the container as CONTAINER_API_KEY"""
        self.direct_port = _closed_port() if offer.direct_broken else fake.sshd.port

    def doc(self) -> Dict[str, Any]:
        f = self.fake
        if f.destroyed:
            status = "destroyed"
        elif f.stopped:
            status = "exited"
        elif f.api_running():
            status = "running"
        else:
            status = "loading" if f.age > f.timeline.running / 2 else "created"
        running = status == "running"
        doc: Dict[str, Any] = {
            "id": self.id, "label": self.label, "image_uuid": self.image, "machine_id": 1000 + self.id,
            "gpu_name": self.offer.gpu_name, "num_gpus": self.offer.num_gpus, "dph_total": self.offer.dph_total,
            "start_date": f.created, "extra_env": [], "intended_status": "stopped" if f.stopped else "running",
            "cur_state": "stopped" if f.stopped else ("running" if running else "loading"),
            "public_ipaddr": "127.0.0.1" if running else None,
            "ssh_host": "127.0.0.1" if running else None,
            "ssh_port": f.sshd.port if running else None,
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.direct_port)}]} if running else {},
        }
        if self.offer.state_quirk == "actual_status":
            doc["actual_status"] = status
        else:
            doc["cur_state"] = status if status != "exited" else "stopped"
        return doc


class FakeVast(FakeApi):
    def __init__(self, api_key: str, make_sshd, offers: List[VastOffer]):
        super().__init__(api_key, make_sshd)
        self.offers = {o.id: o for o in offers}
        self.next_id = 7000
        self.route("POST", r"/api/v0/bundles/", self.search)
        self.route("PUT", r"/api/v0/asks/(?P<ask>\d+)/", self.rent)
        self.route("GET", r"/api/v0/instances/(?P<iid>\d+)/", self.show)
        self.route("GET", r"/api/v1/instances/", self.list)
        self.route("PUT", r"/api/v0/instances/(?P<iid>\d+)/", self.update)
        self.route("DELETE", r"/api/v0/instances/(?P<iid>\d+)/", self.destroy)
        self.route("POST", r"/api/v0/instances/(?P<iid>\d+)/ssh/", self.attach_ssh)
        self.overlays: Dict[str, Dict[str, Any]] = {}
        self.route("POST", r"/api/v0/overlay/", self.create_overlay)
        self.route("GET", r"/api/v0/overlay/", self.show_overlays)
        self.route("PUT", r"/api/v0/overlay/", self.join_overlay)
        self.route("DELETE", r"/api/v0/overlay/", self.delete_overlay)

    def authorized(self, headers, path: str = "") -> bool:
        if super().authorized(headers, path):
            return True
        m = re.fullmatch(r"/api/v0/instances/(\d+)/", path)
        pod = self.pods.get(m.group(1)) if m else None
        return pod is not None and headers.get("Authorization", "") == f"Bearer {pod.container_key}"

    def server_error(self, status):
        return Reply(status, {"success": False, "error": "server_error", "msg": "Internal Server Error"})

    def search(self, body, query):
        q = body or {}
        rows = []
        for o in self.offers.values():
            if o.rented:
                continue
            rows.append({
                "id": o.id, "ask_contract_id": o.id, "machine_id": 500 + o.id, "gpu_name": o.gpu_name,
                "num_gpus": o.num_gpus, "gpu_ram": o.gpu_ram_gb * 1000, "dph_total": o.dph_total,
                "reliability2": o.reliability, "geolocation": o.geolocation, "rentable": True,
                "cpu_name": "AMD EPYC 7B13", "hosting_type": 0, "cluster_id": o.cluster_id,
            })
        ng = (q.get("num_gpus") or {})
        if "eq" in ng:
            rows = [r for r in rows if r["num_gpus"] == ng["eq"]]
        cl = q.get("cluster_id") or {}
        if "neq" in cl:
            rows = [r for r in rows if r["cluster_id"] != cl["neq"]]
        if "eq" in cl:
            rows = [r for r in rows if r["cluster_id"] == cl["eq"]]
        order = q.get("order") or [["score", "desc"]]
        if order and order[0][0] == "dph_total":
            rows.sort(key=lambda r: r["dph_total"], reverse=order[0][1] == "desc")
        return {"offers": rows}

    def rent(self, body, query, ask):
        o = self.offers.get(int(ask))
        if o is None or o.snatched or o.rented:
            return Reply(404, {"success": False, "error": "no_such_ask", "msg": f"Instance type {ask} is no longer available."})
        if o.rent_error:
            return Reply(400, {"success": False, "error": o.rent_error, "msg": o.rent_error})
        self.next_id += 1
        iid = self.next_id
        key = "vast-ctr-" + uuid.uuid4().hex
        fake = FakePod(self.make_sshd(), o.timeline, key_attached=False,
                       env={"CONTAINER_ID": str(iid), "CONTAINER_API_KEY": key})
        self.pods[str(iid)] = VastPod(iid, o, fake, (body or {}).get("label") or "", (body or {}).get("image") or "", key)
        o.rented = True  # an ask is rented once
        if o.id_quirk == "new_contract":
            return {"success": True, "new_contract": iid}
        if o.id_quirk == "instances":
            return {"success": True, "instances": {"id": iid}}
        return {"success": True}

    def _pod(self, iid) -> Optional[VastPod]:
        p = self.pods.get(str(iid))
        return None if p is None or p.fake.destroyed else p

    def show(self, body, query, iid):
        p = self._pod(iid)
        return {"instances": p.doc() if p else None}

    def list(self, body, query):
        return {"instances": [p.doc() for p in self.pods.values() if not p.fake.destroyed], "next_token": None}

    def update(self, body, query, iid):
        p = self._pod(iid)
        if p is None:
            return Reply(404, {"success": False, "error": "no_such_instance"})
        state = (body or {}).get("state")
        if state == "stopped":
            p.fake.stop()
        elif state == "running":
            p.fake.start()
        if "label" in (body or {}):
            p.label = body["label"]
        return {"success": True}

    def destroy(self, body, query, iid):
        p = self._pod(iid)
        if p is None:
            return Reply(404, {"success": False, "error": "no_such_instance"})
        p.fake.destroy()
        return {"success": True}

    def attach_ssh(self, body, query, iid):
        p = self._pod(iid)
        if p is None:
            return Reply(404, {"success": False, "error": "no_such_instance"})
        ok = p.fake.attach_key((body or {}).get("ssh_key"))
        return {"success": ok}

    # -- overlay networks

    def create_overlay(self, body, query):
        b = body or {}
        name, cid = b.get("name"), b.get("cluster_id")
        if not name or name in self.overlays:
            return Reply(400, {"success": False, "error": "invalid_args", "msg": f"overlay name {name!r} is taken"})
        if cid is None or not any(o.cluster_id == cid for o in self.offers.values()):
            return Reply(400, {"success": False, "error": "invalid_args", "msg": f"no physical cluster {cid}"})
        n = len(self.overlays) + 1
        self.overlays[name] = {"overlay_id": 300 + n, "name": name, "internal_subnet": f"10.{n}.0.0/24",
                               "cluster_id": cid, "instances": []}
        return {"success": True, "msg": f"Overlay network {name} created on cluster {cid}."}

    def show_overlays(self, body, query):
        return [dict(o, instances=list(o["instances"])) for o in self.overlays.values()]

    def join_overlay(self, body, query):
        b = body or {}
        overlay, p = self.overlays.get(b.get("name")), self._pod(b.get("instance_id"))
        if overlay is None or p is None:
            return Reply(400, {"success": False, "error": "invalid_args", "msg": "no such overlay or instance"})
        if p.offer.cluster_id != overlay["cluster_id"]:
            return Reply(400, {"success": False, "error": "invalid_args",
                               "msg": f"instance {p.id} is not on physical cluster {overlay['cluster_id']}"})
        overlay["instances"].append(p.id)
        return {"success": True, "msg": f"Instance {p.id} joined overlay {overlay['name']}."}

    def delete_overlay(self, body, query):
        b = body or {}
        name = b.get("overlay_name") or next((n for n, o in self.overlays.items()
                                              if o["overlay_id"] == b.get("overlay_id")), None)
        if name not in self.overlays:
            return Reply(404, {"success": False, "error": "no_such_overlay"})
        del self.overlays[name]
        return {"success": True, "msg": f"Overlay {name} deleted."}
