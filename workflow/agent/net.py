"""The pod's network, for multi-node runs (SPEC §9): which interface holds an address,
free ports for a rendezvous, and the TCP probe between nodes before a launch.

Ops (one exec each, JSON in/out):

* ``net.addr``: ``{network}`` -> ``{addr, source}``: the pod's private address where its
  provider gives one: ``NODE_ADDR`` (RunPod instant clusters set it in the container's
  environment, PID 1's when the SSH session lacks it), else with ``network: cluster``
  the IPv4 address of ``eth0`` (a Vast overlay network); None otherwise;
* ``net.facts``: ``{addr, ports}`` -> ``{addr, iface, ports: [...]}``: the interface
  holding ``addr`` (None when no interface here holds it: a NAT'd public address) and
  ``ports`` free TCP ports on it, for the rendezvous endpoints of runs whose node 0 is here;
* ``net.listen``: ``{addr, port, peers, secs}``: listen on ``addr:port`` until ``peers``
  connections came (each gets ``podflow-probe``) or ``secs`` passed;
* ``net.connect``: ``{addr, port, secs}``: connect to ``addr:port`` (retrying until
  ``secs``) and read the greeting: whether this pod reaches node 0 on that port.
"""

import fcntl
import os
import socket
import struct
import time

from .protocol import AgentError

GREETING = b"podflow-probe\n"
_SIOCGIFADDR = 0x8915


def iface_of(addr):
    """The name of the interface that holds IPv4 ``addr`` (a name is resolved first), or None."""
    try:
        wanted = socket.gethostbyname(addr)
    except (OSError, UnicodeError):
        return None
    if wanted.startswith("127."):
        wanted = "127.0.0.1"  # the loopback interface holds all of 127.0.0.0/8
    for _index, name in socket.if_nameindex():
        if iface_addr(name) == wanted:
            return name
    return None


def _container_env(name):
    value = os.environ.get(name)
    if value:
        return value
    try:
        with open("/proc/1/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                key, _, val = item.partition(b"=")
                if key.decode("utf-8", "replace") == name and val:
                    return val.decode("utf-8", "replace")
    except OSError:
        pass
    return None


def iface_addr(name):
    """The IPv4 address of interface ``name``, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(raw[20:24])
    except OSError:
        return None
    finally:
        s.close()


def private_addr(request):
    node_addr = _container_env("NODE_ADDR")
    if node_addr:
        return {"addr": node_addr, "source": "NODE_ADDR"}
    if request.get("network") == "cluster":
        overlay = iface_addr(request.get("iface") or "eth0")
        if overlay:
            return {"addr": overlay, "source": "eth0 (overlay network)"}
    return {"addr": None, "source": None}


def free_ports(addr, count):
    """``count`` distinct TCP ports free on ``addr`` now (bound together, then let go)."""
    held = []
    try:
        for _ in range(int(count)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((addr, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    except OSError as exc:
        raise AgentError("input", "cannot bind a port on %s here: %s" % (addr, exc))
    finally:
        for s in held:
            s.close()


def facts(request):
    addr = request["addr"]
    iface = iface_of(addr)
    want = int(request.get("ports") or 0)
    ports = free_ports(addr if iface else "0.0.0.0", want) if want else []
    return {"addr": addr, "iface": iface, "ports": ports}


def listen(request):
    addr, port = request["addr"], int(request["port"])
    peers, secs = int(request.get("peers") or 1), float(request.get("secs") or 10)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((addr if iface_of(addr) else "0.0.0.0", port))
    except OSError as exc:
        srv.close()
        raise AgentError("input", "cannot listen on %s:%d: %s (is the port in use?)" % (addr, port, exc))
    srv.listen(16)
    came, end = 0, time.monotonic() + secs
    try:
        while came < peers and time.monotonic() < end:
            srv.settimeout(max(0.05, end - time.monotonic()))
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                break
            with conn:
                conn.sendall(GREETING)
            came += 1
    finally:
        srv.close()
    return {"addr": addr, "port": port, "came": came}


def connect(request):
    addr, port, secs = request["addr"], int(request["port"]), float(request.get("secs") or 10)
    end, last = time.monotonic() + secs, "no attempt"
    while True:
        try:
            with socket.create_connection((addr, port), timeout=max(0.5, min(3.0, end - time.monotonic()))) as s:
                got = s.recv(len(GREETING))
            if got == GREETING:
                return {"addr": addr, "port": port, "reached": True}
            last = "something else answers there"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= end:
            return {"addr": addr, "port": port, "reached": False, "error": last}
        time.sleep(0.2)


OPS = {"net.addr": private_addr, "net.facts": facts, "net.listen": listen, "net.connect": connect}
