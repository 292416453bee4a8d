"""Multi-node runs (SPEC §9): one training run over several pods, joined by torchrun's
own c10d rendezvous.

podflow's part is small: pick the run's pods (``pooled.place_nodes``), find each pod's
address (``pod_addr``) and the interface holding it, pick a free port on node 0, check
that every node reaches node 0 on that port (``probe_rendezvous``), and launch node i as

    torchrun --nnodes=<n> --node_rank=<i> --nproc_per_node=<gpus> --rdzv_backend=c10d
             --rdzv_endpoint=<addr of node 0>:<port> --rdzv_id=<run_id>-<attempt>
             --local_addr=<addr of node i> --rdzv_conf=is_host=<1 on node 0>,read_timeout=<s>,join_timeout=<s>
             <entrypoint> <args>

with ``WF_NODE_RANK``/``WF_NNODES`` and ``NCCL_SOCKET_IFNAME``/``GLOO_SOCKET_IFNAME``
(unless ``remote.env`` sets them) in its environment, and ``WF_NODE_WATCH``: a second
port on node 0 where each node's watchdog (``workflow/agent/node_watch.py``) meets node
0's, so a node that fails, times out or is lost ends the others within 30 s on the pods
themselves. The run's timeout is node 0's: nodes ≥ 1 have none of their own and end
when node 0 does.

Why the extra flags: ``is_host`` says which node's torchrun hosts the rendezvous store
(two nodes on one machine would both claim it). The timeouts let a node wait for the
others while their pods finish the runs queued before it (each pod's runner keeps CSV
order and starts nothing past a multi-node run that waits for GPUs, so nodes meet
without deadlock). torch ignores ``--node_rank`` under c10d and numbers the nodes in
the order of their ``--local_addr`` (as strings; then its own pids), so a run's nodes
are ranked by address, and a run two of whose pods share one is refused
(``check_distinct_addrs``): node 0 then runs torch's rank 0, which writes the run's files into node 0's run
dir, the run dir. Pods on one machine (the ``local`` provider) each get their own
loopback address (127.0.0.1, 127.0.0.2, ...) for that.

The run's nodes are one run to every reader: ``combine`` gives its state (``success``
only when every node succeeded; otherwise the state of the node that ended it first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from workflow.errors import ConfigError, InputError
from workflow.sweep.plan import RunPlan

#: Seconds a node waits for the others (the rendezvous store, then the join).
WAIT_SECS = 1800
#: Seconds nodes ≥ 1 try to reach node 0's port in the probe before a launch.
PROBE_SECS = 10.0
IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
ENDED = ("success", "failed", "timed_out", "cancelled", "lost")


@dataclass(frozen=True)
class Node:
    """One node of a multi-node run, as one pod launches it."""

    rank: int
    pods: Tuple[str, ...]
    """The run's pods, node 0 first."""
    endpoint: str
    """``<addr of node 0>:<port>``: the c10d rendezvous."""
    rdzv_id: str
    """``<run_id>-<attempt>``: the same on every node of one launch."""
    addr: str = ""
    """This pod's address (``--local_addr``: torch orders its nodes by it)."""
    iface: Optional[str] = None
    """The interface holding this pod's address (NCCL/GLOO_SOCKET_IFNAME); None: unknown."""
    previous: Optional[str] = None
    """The run's last state over all its nodes (``combine``); None: it never ran."""
    watch: str = ""
    """``<addr of node 0>:<port>``: where the nodes' watchdogs meet (``WF_NODE_WATCH``)."""

    @property
    def nnodes(self) -> int:
        return len(self.pods)


def node_argv(plan: RunPlan, node: Node) -> Tuple[str, ...]:
    """``plan``'s torchrun argv launched as ``node``: ``--standalone`` gives way to the
    multi-node flags; everything after it stays as planned."""
    argv = list(plan.argv)
    if argv[:2] != ["torchrun", "--standalone"]:
        raise ConfigError(f"run {plan.run_id}: a run on several nodes needs sweep.launcher: torchrun")
    flags = [f"--nnodes={node.nnodes}", f"--node_rank={node.rank}"]
    rest = argv[2:]
    if rest and rest[0].startswith("--nproc_per_node="):
        flags.append(rest.pop(0))
    flags += ["--rdzv_backend=c10d", f"--rdzv_endpoint={node.endpoint}", f"--rdzv_id={node.rdzv_id}"]
    if node.addr:
        flags.append(f"--local_addr={node.addr}")
    flags.append(f"--rdzv_conf=is_host={1 if node.rank == 0 else 0},read_timeout={WAIT_SECS},join_timeout={WAIT_SECS}")
    return tuple(["torchrun"] + flags + rest)


def as_node(plan: RunPlan, node: Node, remote_env: Mapping[str, str]) -> RunPlan:
    """The plan of node ``node.rank`` of ``plan``'s run: its argv and its environment."""
    env = dict(plan.env, WF_NODE_RANK=str(node.rank), WF_NNODES=str(node.nnodes))
    if node.watch:
        env["WF_NODE_WATCH"] = node.watch
    for var in IFNAME_VARS:
        if node.iface and var not in remote_env:
            env[var] = node.iface
    timeout = plan.timeout_secs if node.rank == 0 or not node.watch else None  # node 0's clock is the run's
    return replace(plan, argv=node_argv(plan, node), env=env, node_rank=node.rank, nodes=node.nnodes,
                   timeout_secs=timeout)


def pod_addr(cfg, pod) -> str:
    """The address other pods reach ``pod`` on (called in the pod's runtime context):
    ``pod.hosts[].addr``; else, on a cloud pod, the provider's private or overlay address
    (``net.addr``: RunPod's ``NODE_ADDR``, a Vast overlay's ``eth0``); else the SSH host
    (this machine's loopback, one address per pod, for the ``local`` provider)."""
    if pod.addr:
        return pod.addr
    provider = cfg.get("pod.provider", "local")
    if provider == "local":
        return f"127.0.0.{pod.index + 1}"  # one machine: a loopback address each (see the module doc)
    if provider == "ssh":
        from workflow.transport.sshconfig import resolve_ssh_endpoint

        return resolve_ssh_endpoint(cfg).host
    from workflow import runtime, session

    private = runtime.agent().call("net.addr", timeout=60, network=cfg.get("pod.network", None)).get("addr")
    if private:
        return str(private)
    rec = session.load(cfg)
    if rec is None or not rec.host:
        raise InputError("the pod's address is not known", hint="run 'wf pod-up' first")
    return rec.host


def check_fits(run_id: str, nodes: int, pods: int) -> None:
    if nodes > pods:
        raise InputError(f"run {run_id} spans {nodes} nodes but the pool has {pods} pod(s)",
                         hint="raise pod.count (or list more pod.hosts), or lower the run's nodes")


def check_distinct_addrs(gangs: Mapping[str, Sequence[str]], addrs: Mapping[str, str]) -> None:
    """Refuse (``InputError``, exit 2) a run two of whose pods have one address: torch's
    c10d rendezvous ranks nodes by address, then by its own pid, so which of them runs
    torch's rank 0 (the run's files, node 0's dir) would be chance."""
    problems = []
    for run_id, chosen in gangs.items():
        seen: Dict[str, str] = {}
        for name in chosen:
            if addrs[name] in seen:
                problems.append(f"run {run_id}: {seen[addrs[name]]} and {name} both have address {addrs[name]}")
            seen.setdefault(addrs[name], name)
    if problems:
        raise InputError("a multi-node run's pods need an address each (torch ranks its nodes by address):\n  "
                         + "\n  ".join(problems),
                         hint="set pod.hosts[].addr to each pod's own (private) address, "
                              "or rent the pods on a private network (pod.network: cluster)")


def combine(nodes: Sequence[Mapping[str, Any]]) -> str:
    """The state of a run from its nodes' states (rank order): ``success`` when all
    succeeded; once any node ended otherwise, ``lost`` if one was lost, else the state of
    the first one that ended that way (it ends the others); else ``running`` while any
    node runs; else node 0's."""
    states = [n.get("state") for n in nodes]
    if states and all(s == "success" for s in states):
        return "success"
    bad = [n for n in nodes if n.get("state") in ENDED and n.get("state") != "success"]
    if bad:
        # a lost node is taken for the cause: its end time is when a reader noticed (the
        # repair pass wrote it), not when it died; the others failed or ended after it
        first = min(bad, key=lambda n: (n.get("state") != "lost", n.get("finished_at") or "", n.get("rank", 0)))
        return str(first["state"])
    if "running" in states:
        return "running"
    return str(states[0]) if states else "unknown"


def probe_rendezvous(gangs: Mapping[str, Node], by_name: Mapping[str, Any]) -> None:
    """Refuse (``InputError``, exit 2) before anything is launched when a node of a run
    cannot reach its node 0 on the rendezvous port: node 0 listens while the others
    connect, all at once (``pool.fan_out``). ``by_name``: pod name -> ``pool.Pod``."""
    from workflow import pool, runtime

    problems: List[str] = []
    for run_id, node in gangs.items():
        host, port = node.endpoint.rsplit(":", 1)
        peers = len(node.pods) - 1

        def work(pod, host=host, port=int(port), peers=peers, first=node.pods[0]):
            if pod.name == first:
                return runtime.agent().call("net.listen", timeout=PROBE_SECS + 60, addr=host, port=port,
                                            peers=peers, secs=PROBE_SECS + 5)
            return runtime.agent().call("net.connect", timeout=PROBE_SECS + 60, addr=host, port=port, secs=PROBE_SECS)

        results = pool.fan_out([by_name[name] for name in node.pods], work)
        pool.raise_failures(results)
        for r in results[1:]:
            if not r.value.get("reached"):
                problems.append(f"run {run_id}: {r.pod.name} cannot reach node 0 ({node.pods[0]}) at "
                                f"{node.endpoint}: {r.value.get('error')}")
    if problems:
        raise InputError("the pods of a multi-node run cannot reach each other:\n  " + "\n  ".join(problems),
                         hint="open the rendezvous port between the pods (a private network: pod.network: cluster), "
                              "or set pod.hosts[].addr to an address the other pods reach")


def end_unstarted(gangs: Mapping[str, Node], failed: Mapping[str, BaseException],
                  by_name: Mapping[str, Any]) -> List[str]:
    """Multi-node runs some of whose pods could not start them (``failed``: pod name ->
    its error, after the probe): their nodes on the other pods end now as ``failed``
    with the reason (``sweep.end_run``: a running node is ended, one not launched yet
    never is), not after torchrun's join timeout. Returns a line per run saying so."""
    from workflow import pool, runtime

    said = []
    for run_id, node in gangs.items():
        bad = [name for name in node.pods if name in failed]
        started = [by_name[name] for name in node.pods if name not in failed]
        if not bad or not started:
            continue
        why = "; ".join(f"node {node.pods.index(name)} ({name}) could not be started: "
                        f"{getattr(failed[name], 'message', failed[name])}" for name in bad)
        ended = pool.fan_out(started, lambda pod: runtime.agent().call(
            "sweep.end_run", timeout=120, run_id=run_id, state="failed", reason=why))
        not_ended = [r.pod.name for r in ended if not r.ok]
        said.append(f"run {run_id}: {why}; its nodes on {', '.join(p.name for p in started)} "
                    + ("were ended (failed)" if not not_ended else f"could not all be ended ({', '.join(not_ended)})"))
    return said


def fetch_node_logs(run_id: str, gang: Sequence[str], by_name: Mapping[str, Any], dest) -> List[str]:
    """Node i's ``stdout.log`` (i ≥ 1) from its pod into ``dest/stdout.node<i>.log``, the
    pods at once; node 0's run dir is fetched as the run's. Returns the files written."""
    from pathlib import Path

    from workflow import pool, runtime

    def get(pod):
        target = Path(dest) / f"stdout.node{gang.index(pod.name)}.log"
        runtime.transport().get(f"{runtime.config().remote.outputs_dir.rstrip('/')}/{run_id}/stdout.log", target)
        return str(target)

    return list(pool.values(pool.fan_out([by_name[name] for name in gang[1:]], get)).values())
