"""A fake Lium API (base ``.../api``; the routes the ``lium.io`` SDK calls).

- ``GET /api/executors`` -> executor rows (``machine_name``, ``gpu_count``, ``price_per_gpu``,
  ``location``, ``specs.gpu.details``, ``available_gpu_count``, ``reliability_score``)
- ``POST /api/executors/{id}/rent`` -> ``{"success": true, "pod_id": ...}``; an executor
  rented meanwhile -> 409 ``{"detail": ...}``
- ``GET /api/pods`` -> pod rows: ``pod_name``, ``status`` (PENDING -> RUNNING),
  ``ssh_connect_cmd`` ("ssh root@127.0.0.1 -p N", null until running), ``ports_mapping``,
  ``executor``, ``price``
- ``DELETE /api/pods/{id}``; templates, default images, ssh-keys, version for the rent path
Auth: ``X-API-KEY``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fakes.common import FakeApi, FakePod, Reply, Timeline

TEMPLATE_ID = "5b9f7a52-7c4e-4c43-9a3e-0f7c3d2a1b10"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


@dataclass
class LiumExecutor:
    machine_name: str = "NVIDIA GeForce RTX 4090"
    gpu_count: int = 1
    price_per_gpu: float = 0.35
    country: str = "US"
    gpu_memory_mib: int = 24564
    reliability: float = 0.99
    snatched: bool = False
    timeline: Timeline = field(default_factory=Timeline)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def row(self) -> Dict[str, Any]:
        return {
            "id": self.id, "machine_name": self.machine_name, "gpu_count": self.gpu_count,
            "price_per_gpu": self.price_per_gpu, "location": {"country": self.country, "city": "Austin"},
            "specs": {"gpu": {"count": self.gpu_count,
                              "details": [{"name": self.machine_name, "capacity": self.gpu_memory_mib,
                                           "driver": "550.54"}] * self.gpu_count},
                      "cpu": {"count": 32}},
            "status": "available", "executor_ip_address": "127.0.0.1", "available_gpu_count": self.gpu_count,
            "min_gpu_count_for_rental": 1, "reliability_score": self.reliability, "max_cuda_version": 12.4,
        }


class LiumPod:
    def __init__(self, pid: str, name: str, ex: LiumExecutor, fake: FakePod):
        self.id, self.name, self.ex, self.fake = pid, name, ex, fake

    def row(self) -> Dict[str, Any]:
        running = self.fake.api_running()
        port = self.fake.sshd.port
        return {
            "id": self.id, "pod_name": self.name, "status": "RUNNING" if running else "PENDING",
            "ssh_connect_cmd": f"ssh root@127.0.0.1 -p {port}" if running else None,
            "ports_mapping": {"22": port} if running else {}, "created_at": iso(self.fake.created),
            "updated_at": iso(self.fake.created), "executor": self.ex.row(), "template": {"id": TEMPLATE_ID},
            "price": self.ex.price_per_gpu * self.ex.gpu_count, "gpu_count": self.ex.gpu_count,
        }


class FakeLium(FakeApi):
    auth_header = "X-API-KEY"

    def __init__(self, api_key: str, make_sshd, executors: List[LiumExecutor]):
        super().__init__(api_key, make_sshd)
        self.executors = {e.id: e for e in executors}
        self.ssh_keys: List[Dict[str, Any]] = []
        self.route("GET", r"/api/executors", self.ls)
        self.route("GET", r"/api/executors/default-docker-image", lambda body, query: [])
        self.route("POST", r"/api/executors/(?P<eid>[^/]+)/rent", self.rent)
        self.route("GET", r"/api/pods", self.ps)
        self.route("DELETE", r"/api/pods/(?P<pid>[^/]+)", self.rm)
        self.route("GET", r"/api/templates", self.templates)
        self.route("GET", r"/api/templates/(?P<tid>[^/]+)", self.template)
        self.route("GET", r"/api/ssh-keys", lambda body, query: self.ssh_keys)
        self.route("POST", r"/api/ssh-keys", self.add_key)
        self.route("GET", r"/api/version", lambda body, query: {"features": []})
        self.route("GET", r"/api/machines", lambda body, query: [{"name": e.machine_name} for e in self.executors.values()])

    def authorized(self, headers, path: str = "") -> bool:
        return headers.get("X-API-KEY", "") == self.api_key

    def unauthorized(self):
        return Reply(401, {"detail": "Invalid API key"})

    def server_error(self, status):
        return Reply(status, {"detail": "Internal server error"})

    def not_found(self, path):
        return Reply(404, {"detail": "Not found"})

    def _template_doc(self):
        return {"id": TEMPLATE_ID, "name": "PyTorch", "docker_image": "daturaai/pytorch", "docker_image_tag": "2.4.0-py3.11",
                "category": "PYTORCH", "status": "VERIFY_SUCCESS", "supports_volume_encryption": False}

    def ls(self, body, query):
        return [e.row() for e in self.executors.values()]

    def templates(self, body, query):
        return [self._template_doc()]

    def template(self, body, query, tid):
        return self._template_doc() if tid == TEMPLATE_ID else Reply(404, {"detail": "Template not found"})

    def add_key(self, body, query):
        doc = {"id": str(uuid.uuid4()), "name": (body or {}).get("name"), "public_key": (body or {}).get("public_key")}
        self.ssh_keys.append(doc)
        return doc

    def rent(self, body, query, eid):
        ex = self.executors.get(eid)
        if ex is None:
            return Reply(404, {"detail": "Executor not found"})
        if ex.snatched:
            return Reply(409, {"detail": "Executor is already rented by another user"})
        body = body or {}
        keys = body.get("user_public_key") or []
        if not body.get("template_id") and not body.get("dockerfile_content"):
            return Reply(422, {"detail": "template_id is required"})
        ex.snatched = True
        fake = FakePod(self.make_sshd(), ex.timeline, key_attached=False)
        for k in keys:
            fake.attach_key(k)
        pod = LiumPod(str(uuid.uuid4()), body.get("pod_name") or "Your Pod", ex, fake)
        self.pods[pod.id] = pod
        return {"success": True, "pod_id": pod.id}

    def ps(self, body, query):
        return [p.row() for p in self.pods.values() if not p.fake.destroyed]

    def rm(self, body, query, pid):
        p = self.pods.get(pid)
        if p is None or p.fake.destroyed:
            return Reply(404, {"detail": "Pod not found"})
        p.fake.destroy()
        return {"success": True}
