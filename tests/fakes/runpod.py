"""A fake RunPod REST API v2 (``api-reference-v2/openapi.json`` shapes), quirks included.

- ``GET /v2/catalog/gpus`` -> ``{"gpus": [GpuType]}`` (``id``, ``name``, ``memory``,
  ``secure``/``community``, ``price.{secure,community}``, ``maxCount``, ``availability``)
- ``POST /v2/pods`` strict body (unknown fields -> 422 problem; ``name`` and ``image`` or
  ``templateId`` required; exactly one of ``gpu``/``cpu``); a GPU type without capacity
  -> 400 problem; 201 with the Pod
- ``GET /v2/pods/{id}``: ``runtime`` and ``ssh.direct`` null until RUNNING; ``ssh.direct``
  only when ``ports`` holds ``22/tcp``; ``runtime.ports`` lists the public 22 mapping
- ``POST /v2/pods/{id}/action {"action": "start|stop|restart|terminate"}``,
  ``DELETE /v2/pods/{id}`` (204), ``GET /v2/pods`` -> ``{"pods": [...]}``
- every error is an RFC 9457 problem object (``title``, ``status``, ``detail``)
- inside each pod, ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY`` (as RunPod sets
  them), accepted for that pod's own ``/v2/pods/{id}`` and ``/action`` only
- instant clusters (tag ``Clusters``): ``POST /v2/clusters`` strict ``CreateClusterRequest``
  (``name``, ``type``, ``compute: {gpuTypeId, gpuCountPerPod, podCount 2..250}``, container
  config, ``startSsh``) -> 201 ``Cluster``; 400 without capacity for ``podCount`` pods;
  ``GET /v2/clusters[/{id}]``, ``GET /v2/clusters/{id}/pods`` (full pods, each with
  ``cluster: {id, rank, ip}``), ``DELETE /v2/clusters/{id}`` (204, ends every member).
  Member pods get ``NODE_ADDR``, ``PRIMARY_ADDR``, ``NODE_RANK``, ``NUM_NODES`` in their
  environment; their private address is a loopback one of their own (``127.77.<n>.<rank+1>``),
  which really reaches the pod's processes. ``GET /v2/pods`` leaves members out unless
  ``includeClusterPods=true``; ``DELETE``/``action`` on a member answer 409.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fakes.common import FakeApi, FakePod, Reply, Timeline, new_id

CREATE_FIELDS = {"name", "cloud", "cpu", "dataCenterIds", "globalNetworking", "gpu", "mounts", "startJupyter",
                 "startSsh", "templateId", "args", "disk", "env", "image", "ports", "registry"}
GPU_FIELDS = {"id", "count", "allowedCudaVersions", "minCudaVersion", "minRamPerGpu", "minVcpuCountPerGpu"}
CLUSTER_FIELDS = {"name", "type", "compute", "image", "args", "disk", "ports", "env", "dataCenterIds", "mounts",
                  "startJupyter", "startSsh"}
COMPUTE_FIELDS = {"gpuTypeId", "gpuCountPerPod", "podCount"}


def problem(status: int, title: str, detail: str, errors: Optional[list] = None) -> Reply:
    doc: Dict[str, Any] = {"title": title, "status": status, "detail": detail}
    if errors:
        doc["errors"] = errors
    return Reply(status, doc, content_type="application/problem+json")


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class GpuType:
    id: str
    name: str
    memory: int = 24
    secure_price: Optional[float] = 0.69
    community_price: Optional[float] = 0.34
    max_count: int = 8
    capacity: int = 5
    """pods that can still be created; 0: the catalog says NONE"""
    snatched: bool = False
    """the catalog still lists it, but the capacity went meanwhile: create answers 400"""
    timeline: Timeline = field(default_factory=Timeline)


class RunpodPod:
    def __init__(self, pid: str, body: Dict[str, Any], gpu: GpuType, fake: FakePod, pod_key: str = ""):
        self.id, self.body, self.gpu, self.fake = pid, body, gpu, fake
        self.pod_key = pod_key
        """the pod-scoped API key RunPod puts into the pod as RUNPOD_API_KEY"""
        self.terminated = False
        self.cluster: Optional[Dict[str, Any]] = None
        """``{id, rank, ip}`` for a member of an instant cluster"""

    def status(self) -> str:
        f = self.fake
        if self.terminated or f.destroyed:
            return "TERMINATED"
        if f.stopped:
            return "EXITED"
        if f.api_running():
            return "RUNNING"
        return "STARTING" if f.age > f.timeline.running / 2 else "PROVISIONING"

    def doc(self) -> Dict[str, Any]:
        st = self.status()
        running = st == "RUNNING"
        has22 = "22/tcp" in (self.body.get("ports") or [])
        port = self.fake.sshd.port
        cloud = self.body.get("cloud", "SECURE")
        price = self.gpu.secure_price if cloud == "SECURE" else self.gpu.community_price
        count = (self.body.get("gpu") or {}).get("count", 1)
        user = getattr(self.fake.sshd, "login_user", "root")  # a test may give each pod its own user
        direct = {"host": "127.0.0.1", "port": port, "username": user,
                  "command": f"ssh {user}@127.0.0.1 -p {port}"} if running and has22 else None
        return {
            "id": self.id, "name": self.body["name"], "status": st,
            "actions": {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"]}.get(st, ["terminate"]),
            "image": self.body.get("image") or "", "args": self.body.get("args", ""), "disk": self.body.get("disk", 50),
            "mounts": self.body.get("mounts") or {}, "ports": self.body.get("ports") or [],
            "env": {k: ("***" if k == "PUBLIC_KEY" else v) for k, v in (self.body.get("env") or {}).items()},
            "registry": None, "cloud": cloud, "dataCenterId": "US-TX-3" if running else None,
            "cudaVersion": "12.8", "template": None,
            "gpu": {"id": self.gpu.id, "count": count, "vcpuCount": 8, "memory": 31},
            "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": f"{self.id}-64411eb2",
                              "command": f"ssh {self.id}-64411eb2@ssh.runpod.io"} if running else None,
                    "direct": direct},
            "cost": round(price * count, 4) if st not in ("EXITED", "TERMINATED") else 0.0,
            "locked": False,
            "runtime": {"uptime": int(self.fake.age), "gpus": [], "cpu": {"util": 3}, "memory": {"util": 5},
                        "ports": ([{"private": 22, "public": port, "type": "tcp", "ip": "127.0.0.1"}] if has22 else [])
                        + [{"private": 8888, "public": None, "type": "http", "ip": None}]} if running else None,
            "createdAt": iso(self.fake.created), "startedAt": iso(self.fake.created) if running else None,
            "globalNetworking": {"enabled": False},
            **({"cluster": dict(self.cluster)} if self.cluster else {}),
        }


class FakeRunpod(FakeApi):
    def __init__(self, api_key: str, make_sshd, gpus: List[GpuType]):
        super().__init__(api_key, make_sshd)
        self.gpus = {g.id: g for g in gpus}
        self.route("GET", r"/v2/catalog/gpus", self.catalog)
        self.route("POST", r"/v2/pods", self.create)
        self.route("GET", r"/v2/pods", self.list)
        self.route("GET", r"/v2/pods/(?P<pid>[^/]+)", self.get)
        self.route("POST", r"/v2/pods/(?P<pid>[^/]+)/action", self.action)
        self.route("DELETE", r"/v2/pods/(?P<pid>[^/]+)", self.delete)
        self.clusters: Dict[str, Dict[str, Any]] = {}
        self.route("POST", r"/v2/clusters", self.create_cluster)
        self.route("GET", r"/v2/clusters", self.list_clusters)
        self.route("GET", r"/v2/clusters/(?P<cid>[^/]+)", self.get_cluster)
        self.route("GET", r"/v2/clusters/(?P<cid>[^/]+)/pods", self.cluster_pods)
        self.route("DELETE", r"/v2/clusters/(?P<cid>[^/]+)", self.delete_cluster)

    def authorized(self, headers, path: str = "") -> bool:
        if super().authorized(headers, path):
            return True
        m = re.fullmatch(r"/v2/pods/([^/]+)(/action)?", path)
        pod = self.pods.get(m.group(1)) if m else None
        return pod is not None and headers.get("Authorization", "") == f"Bearer {pod.pod_key}"

    def unauthorized(self):
        return problem(401, "Unauthorized", "missing bearer token")

    def server_error(self, status):
        return problem(status, "Internal Server Error", "upstream request failed")

    def not_found(self, path):
        return problem(404, "Not Found", "resource not found")

    def catalog(self, body, query):
        out = []
        for g in self.gpus.values():
            doc = {"id": g.id, "name": g.name, "pool": "ADA_24", "manufacturer": "Nvidia", "memory": g.memory,
                   "secure": g.secure_price is not None, "community": g.community_price is not None,
                   "price": {"secure": g.secure_price, "community": g.community_price},
                   "maxCount": {"secure": g.max_count, "community": g.max_count}}
            if query.get("include") == "AVAILABILITY":
                if not query.get("product"):
                    return problem(400, "Bad Request", "product is required with include=AVAILABILITY")
                doc["availability"] = "HIGH" if g.capacity > 0 else "NONE"
                if g.capacity > 0:
                    doc["dataCenters"] = [{"id": "US-TX-3", "name": "US Texas 3", "availability": "HIGH"}]
            out.append(doc)
        return {"gpus": out}

    def create(self, body, query):
        if not isinstance(body, dict):
            return problem(422, "Unprocessable Entity", "Request validation failed.", ["body must be an object"])
        unknown = sorted(set(body) - CREATE_FIELDS)
        errors = [f"unexpected property '{k}'" for k in unknown]
        if not body.get("name"):
            errors.append("name is required")
        if not body.get("image") and not body.get("templateId"):
            errors.append("image is required unless templateId is set")
        if ("gpu" in body) == ("cpu" in body):
            errors.append("exactly one of gpu or cpu must be set")
        gpu_req = body.get("gpu") or {}
        errors += [f"unexpected property 'gpu.{k}'" for k in sorted(set(gpu_req) - GPU_FIELDS)]
        for p in body.get("ports") or []:
            if not isinstance(p, str) or "/" not in p:
                errors.append(f"port {p!r} is not port/protocol")
        if body.get("cloud", "SECURE") not in ("SECURE", "COMMUNITY"):
            errors.append("cloud must be SECURE or COMMUNITY")
        if errors:
            return problem(422, "Unprocessable Entity", "Request validation failed.", errors)
        g = self.gpus.get(gpu_req.get("id"))
        if g is None:
            return problem(400, "Bad Request", f"unknown GPU type {gpu_req.get('id')!r}")
        if g.capacity <= 0 or g.snatched:
            return problem(400, "Bad Request",
                           "There are no longer any instances available with the requested specifications.")
        g.capacity -= 1
        return Reply(201, self._new_pod(body, g, {}).doc())

    def _pod(self, pid) -> Optional[RunpodPod]:
        p = self.pods.get(pid)
        return None if p is None or p.terminated else p

    def get(self, body, query, pid):
        p = self._pod(pid)
        return p.doc() if p else problem(404, "Not Found", "The requested Pod does not exist.")

    def list(self, body, query):
        members = query.get("includeClusterPods") == "true"
        return {"pods": [p.doc() for p in self.pods.values() if not p.terminated and (members or not p.cluster)]}

    def _new_pod(self, body, g: GpuType, env: Dict[str, str]) -> RunpodPod:
        pid, pod_key = "pod_" + new_id(), "rp-podkey-" + new_id()
        fake = FakePod(self.make_sshd(), g.timeline, key_attached=False,
                       env={"RUNPOD_POD_ID": pid, "RUNPOD_API_KEY": pod_key, **env})
        if body.get("startSsh") or (body.get("env") or {}).get("PUBLIC_KEY"):
            fake.attach_key((body.get("env") or {}).get("PUBLIC_KEY"))
        pod = RunpodPod(pid, body, g, fake, pod_key)
        self.pods[pod.id] = pod
        return pod

    # -- instant clusters

    def create_cluster(self, body, query):
        if not isinstance(body, dict):
            return problem(422, "Unprocessable Entity", "Request validation failed.", ["body must be an object"])
        compute = body.get("compute") if isinstance(body.get("compute"), dict) else {}
        errors = [f"unexpected property '{k}'" for k in sorted(set(body) - CLUSTER_FIELDS)]
        errors += [f"unexpected property 'compute.{k}'" for k in sorted(set(compute) - COMPUTE_FIELDS)]
        errors += [f"{k} is required" for k in ("name", "type", "compute") if not body.get(k)]
        errors += [f"compute.{k} is required" for k in sorted(COMPUTE_FIELDS - set(compute))]
        if body.get("type") not in (None, "APPLICATION", "TRAINING", "SLURM", "RAY"):
            errors.append("type must be one of APPLICATION, TRAINING, SLURM, RAY")
        count = compute.get("podCount")
        if not isinstance(count, int) or not 2 <= count <= 250:
            errors.append("compute.podCount must be an integer from 2 to 250")
        if errors:
            return problem(422, "Unprocessable Entity", "Request validation failed.", errors)
        g = self.gpus.get(compute["gpuTypeId"])
        if g is None:
            return problem(400, "Bad Request", f"unknown GPU type {compute['gpuTypeId']!r}")
        if g.capacity < count or g.snatched:
            return problem(400, "Bad Request", "There are not enough instances available for this cluster.")
        g.capacity -= count
        cid, net = "cluster_" + new_id(), len(self.clusters) + 1
        addrs = [f"127.77.{net}.{rank + 1}" for rank in range(count)]
        members = []
        for rank, addr in enumerate(addrs):
            pod = self._new_pod(dict(body, gpu={"id": g.id, "count": compute["gpuCountPerPod"]}, cloud="SECURE"), g,
                                {"NODE_ADDR": addr, "PRIMARY_ADDR": addrs[0], "NODE_RANK": str(rank),
                                 "NUM_NODES": str(count)})
            pod.cluster = {"id": cid, "rank": rank, "ip": addr}
            members.append(pod.id)
        self.clusters[cid] = {"id": cid, "name": body["name"], "type": body["type"], "compute": dict(compute),
                              "members": members, "createdAt": iso(self.pods[members[0]].fake.created)}
        return Reply(201, self._cluster_doc(cid))

    def _cluster_doc(self, cid) -> Dict[str, Any]:
        c = self.clusters[cid]
        live = [self.pods[m] for m in c["members"] if not self.pods[m].terminated]
        by: Dict[str, int] = {}
        for p in live:
            by[p.status()] = by.get(p.status(), 0) + 1
        return {"id": cid, "name": c["name"], "type": c["type"], "compute": c["compute"], "dataCenterId": "US-TX-3",
                "pods": {"total": len(live), "byStatus": by}, "network": {"cidr": "127.77.0.0/16"},
                "primary": {"podId": c["members"][0], "status": self.pods[c["members"][0]].status()},
                "createdAt": c["createdAt"]}

    def list_clusters(self, body, query):
        return {"clusters": [self._cluster_doc(cid) for cid in self.clusters]}

    def get_cluster(self, body, query, cid):
        return self._cluster_doc(cid) if cid in self.clusters else problem(404, "Not Found", "Cluster not found")

    def cluster_pods(self, body, query, cid):
        if cid not in self.clusters:
            return problem(404, "Not Found", "Cluster not found")
        return {"pods": [self.pods[m].doc() for m in self.clusters[cid]["members"] if not self.pods[m].terminated]}

    def delete_cluster(self, body, query, cid):
        c = self.clusters.pop(cid, None)
        if c is None:
            return problem(404, "Not Found", "Cluster not found")
        for m in c["members"]:
            self.pods[m].terminated = True
            self.pods[m].fake.destroy()
        return Reply(204, None)

    def action(self, body, query, pid):
        p = self._pod(pid)
        if p is None:
            return problem(404, "Not Found", "The requested Pod does not exist.")
        if p.cluster:
            return problem(409, "Conflict", "Pod belongs to a cluster and cannot be modified via the pod endpoints.")
        if not isinstance(body, dict) or set(body) != {"action"}:
            return problem(422, "Unprocessable Entity", "Request validation failed.", ["body must be {action}"])
        a = body["action"]
        if a not in ("start", "stop", "restart", "terminate"):
            return problem(422, "Unprocessable Entity", "Request validation failed.", [f"unknown action {a!r}"])
        if a == "stop":
            p.fake.stop()
        elif a == "start":
            p.fake.start()
        elif a == "terminate":
            p.terminated = True
            p.fake.destroy()
        return p.doc()

    def delete(self, body, query, pid):
        p = self._pod(pid)
        if p is None:
            return problem(404, "Not Found", "The requested Pod does not exist.")
        if p.cluster:
            return problem(409, "Conflict", "Pod belongs to a cluster and cannot be terminated via the pod endpoints.")
        p.terminated = True
        p.fake.destroy()
        return Reply(204, None)
