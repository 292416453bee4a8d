"""Balance and recovery of a pool's sweep (SPEC §8): what ``sweep-wait`` (and
``sweep-status --watch``) do between reads on a pool, and ``sweep-recover``.

Each round reads every pod at once (one status each), then:

* **Health.** A pod is down when its provider says it is stopped, exited, terminated,
  broken or gone, or when every read of it has failed for ``pool.down_after_secs``.
  Only consecutive failures count, and only failures to reach it: a slow answer, or a
  pod that answers with an error, is not a death.
* **Stale copies.** A pod that answers but still has, pending or running, a run the
  placement record gives to another pod (it was down and came back) has that copy
  withdrawn and cancelled: the record is the truth, a stale copy never wins.
* **Moves.** A pod with no runner alive (idle) takes runs: first those with no live
  pod (the unfinished runs of a down pod, with ``pool.recover``; runs withdrawn whose
  start elsewhere failed), else about half the pending queue of the busiest pod.

A move is: withdraw the runs on the pod that has them (atomic there, under the lock its
runner launches under: a run is launched there or withdrawn, never both), start them on
the idle pod, then record them in ``.podflow/pool-sweep.json``. The runs of a down pod
cannot be withdrawn: they are re-placed with their attempt counted one more, and their
copies are cancelled if that pod comes back. Clients on this machine take turns (a file
lock); clients on two machines are kept apart by the pods themselves: a run is withdrawn
once, and a start on a pod whose runner is alive is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from workflow import pool, runtime
from workflow.errors import ExitCode, PodflowError, WaitTimeout
from workflow.sweep import pooled

Say = Callable[[str], None]
LOCK = Path(".podflow") / "pool-balance.lock"
#: Pod states (fsm) from which an idle pod may start the runs it takes.
STARTABLE = ("CHECKED_OUT", "SWEEP_COMPLETED")
#: The longest a read of one pod may take in a round (a pod that hangs is a failed read).
READ_TIMEOUT_SECS = 30.0


# ---------------------------------------------------------------- health


@dataclass
class PodHealth:
    failing_since: Optional[float] = None
    failures: int = 0
    down: Optional[str] = None
    """Why the pod is down; None while it is up."""


class Health:
    """Each pod's consecutive failed reads, and whether that makes it down."""

    def __init__(self, down_after_secs: float, clock: Callable[[], float] = time.monotonic):
        self.down_after = float(down_after_secs)
        self.clock = clock
        self.pods: Dict[str, PodHealth] = {}

    def observe(self, result: pool.PodResult, provider_says: Callable[[pool.Pod], Optional[str]]) -> None:
        """One read of a pod: a success makes it up again; a failure to reach it counts."""
        name = result.pod.name
        if result.ok or int(getattr(result.error, "exit_code", 1)) != ExitCode.UNREACHABLE:
            self.pods[name] = PodHealth()
            return
        h = self.pods.setdefault(name, PodHealth())
        now = self.clock()
        if h.failing_since is None:
            h.failing_since = now
        h.failures += 1
        if h.down:
            return
        said = provider_says(result.pod)
        if said:
            h.down = said
        elif h.failures >= 2 and now - h.failing_since >= self.down_after:
            h.down = f"unreachable for {now - h.failing_since:.0f}s ({h.failures} reads failed)"

    def down(self, name: str) -> Optional[str]:
        h = self.pods.get(name)
        return h.down if h else None


def provider_says(pod: pool.Pod) -> Optional[str]:
    """Why the provider says ``pod`` is dead (stopped, exited, terminated, broken, gone), or
    None (alive, unknown, or a provider that keeps no pods: ssh). A local pool pod taken
    down says so too (``providers.local``)."""
    from workflow import session
    from workflow.money import spend
    from workflow.providers import get_provider
    from workflow.providers.base import PodGone, PodState

    with runtime.on_pod(pod):
        cfg = runtime.config()
        if cfg.pod.provider == "ssh":
            return None
        if cfg.pod.provider == "local":
            info = get_provider(cfg).get("")
            return f"the provider says it is {info.state.value}" if info.state != PodState.RUNNING else None
        rec = session.load(cfg)
        if rec is None or not rec.pod_id:
            return None
        try:
            info = get_provider(cfg).get(rec.pod_id)
        except PodGone:
            spend.observe(cfg, cfg.pod.provider, rec.pod_id, gone=True)  # the ledger closes it (SPEC §10)
            return "the provider says it is gone"
        except PodflowError:
            return None  # the API itself cannot be read: that says nothing of the pod
        spend.observe(cfg, cfg.pod.provider, rec.pod_id, info)
    if info.state in (PodState.STOPPED, PodState.ERROR, PodState.TERMINATED):
        return f"the provider says it is {info.state.value}"
    return None


def replace_pod(pod: pool.Pod, sha: Optional[str], say: Say) -> None:
    """Rent a new cloud pod under ``pod``'s name (the old one destroyed if its provider still
    has it; with ``pod.network: cluster`` onto the pool's network, ``clusters.replace_member``),
    bootstrap it and check it out at ``sha`` (the pool's commit)."""
    from workflow import prepare, session
    from workflow.errors import InputError
    from workflow.providers import clusters, get_provider, lifecycle

    project = runtime.config()
    with runtime.on_pod(pod):
        cfg = runtime.config()
        if cfg.pod.provider in ("local", "ssh"):
            raise InputError(f"{pod.name}: a {cfg.pod.provider} pod cannot be replaced: nothing to rent",
                             hint="pool.replace and --replace are for cloud pools (lium, vastai, runpod)")
        runtime.forget_pod(pod)
        if clusters.wanted(cfg):  # onto the pool's private network (Vast), or refused (RunPod)
            clusters.replace_member(project, pod, say)
        else:
            old = session.load(cfg)
            if old is not None and old.pod_id:
                say(f"{pod.name}: destroying the down pod {old.pod_id} and renting a replacement")
                lifecycle._destroy_quietly(get_provider(cfg), old.pod_id, say, cfg, reason="down: replaced")
            session.clear(cfg)
            lifecycle.pod_up(cfg)
        prepare.run("bootstrap", progress="quiet")
        prepare.run("checkout", progress="quiet", sha=sha)
    say(f"{pod.name}: replaced, checked out at {(sha or 'the default branch')[:12]}")


def pool_sha(up_pods: Sequence[pool.Pod]) -> Optional[str]:
    """The commit the pods that are up checked out (their state files record it)."""
    for pod in up_pods:
        with runtime.on_pod(pod), contextlib.suppress(PodflowError):
            sha = runtime.fsm().status().get("checkout_sha")
            if sha:
                return sha
    return None


# ---------------------------------------------------------------- deciding the moves


@dataclass(frozen=True)
class Move:
    runs: Tuple[str, ...]
    to: str
    source: Optional[str]
    """The pod to withdraw them from first (None: none can be asked: the runs' pod is down,
    or they were withdrawn already)."""
    why: str
    """``balance`` (pending runs of a busy pod), ``recover`` (a down pod's), ``stranded``."""
    nodes: Tuple[str, ...] = ()
    """A multi-node run re-placed (its one run): all its new pods, ``to`` among them."""


def _idle(st) -> bool:
    return st.state != "running" and (st.fsm_state in STARTABLE)


def orphans(up: Mapping[str, object], down: Sequence[str], placement: pooled.Placement,
            recover: bool) -> List[Tuple[str, str]]:
    """Runs that no live pod will run: ``(run_id, why)``. A down pod's runs not known to
    have ended (with ``recover``), and runs a pod withdrew that no other pod started."""
    out: List[Tuple[str, str]] = []
    if recover:
        for name in down:
            out += [(r, "recover") for r in placement.held_by(name)
                    if r not in placement.ended and r not in placement.nodes]  # multi-node: not moved yet
    for name, st in up.items():
        out += [(r, "stranded") for r in getattr(st, "withdrawn", ()) if placement.pod_of(r) == name]
    return out


def lost_gangs(down: Sequence[str], placement: pooled.Placement, recover: bool) -> List[str]:
    """Multi-node runs with a node on a down pod, not known to have ended (with ``recover``)."""
    if not recover:
        return []
    return [run_id for run_id, gang in placement.nodes.items()
            if run_id not in placement.ended and any(name in down for name in gang)]


def plan_moves(up: Mapping[str, object], down: Sequence[str], placement: pooled.Placement,
               recover: bool = True) -> List[Move]:
    """The moves of one round. ``up``: pod name -> its ``SweepStatus`` (pod order);
    ``down``: the pods that are down.

    A multi-node run with a node on a down pod is re-placed whole, on as many idle pods
    that are up (its own live pods first), all its nodes again, never some of them; with
    fewer idle pods it waits (pending) for a later round."""
    idle = [name for name, st in up.items() if _idle(st)]
    if not idle:
        return []
    def may(run_id: str, pod: str) -> bool:  # a pod a run left while down is not given it again
        return pod not in placement.left.get(run_id, ())

    moves: List[Move] = []
    for run_id in lost_gangs(down, placement, recover):
        gang = placement.nodes[run_id]
        fits = sorted([name for name in idle if may(run_id, name)], key=lambda name: name not in gang)
        if len(fits) < len(gang):
            continue  # too few pods now: it waits
        chosen = tuple(sorted(fits[:len(gang)], key=list(up).index))
        moves.append(Move((run_id,), chosen[0], None, "recover", nodes=chosen))
        idle = [name for name in idle if name not in chosen]

    homeless = orphans(up, down, placement, recover)
    if homeless:
        for i, name in enumerate(idle):
            fits = [o for o in homeless if may(o[0], name)]
            take = fits[:math.ceil(len(fits) / (len(idle) - i))]
            homeless = [o for o in homeless if o not in take]
            for why in ("recover", "stranded"):
                runs = tuple(r for r, w in take if w == why)
                if runs:
                    moves.append(Move(runs, name, None, why))
        return moves
    queues = {name: [r.id for r in st.runs if r.state == "pending" and placement.pod_of(r.id, name) == name
                     and r.id not in placement.nodes]  # a multi-node run's nodes start together where placed
              for name, st in up.items() if st.state == "running"}
    for name in idle:
        fits = {n: [r for r in q if may(r, name)] for n, q in queues.items()}
        busiest = max(fits, key=lambda n: len(fits[n]), default=None)
        if busiest is None or not fits[busiest]:
            continue
        take = fits[busiest][-((len(fits[busiest]) + 1) // 2):]
        moves.append(Move(tuple(take), name, busiest, "balance"))
        queues[busiest] = [r for r in queues[busiest] if r not in take]
    return moves


# ---------------------------------------------------------------- doing them


@contextlib.contextmanager
def turn(cfg) -> Iterator[None]:
    """One client of this project at a time moves runs (a file lock beside the record)."""
    path = Path(cfg.root) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _by_name(cfg) -> Dict[str, pool.Pod]:
    return {p.name: p for p in pool.pods(cfg)}


def withdraw(pod: pool.Pod, run_ids: Sequence[str], *, cancel: bool = False) -> Dict[str, object]:
    """Take ``run_ids`` out of ``pod``'s sweep (see ``sweep.withdraw`` on the pod)."""
    with runtime.on_pod(pod):
        return runtime.agent().call("sweep.withdraw", timeout=120, run_ids=list(run_ids), cancel=cancel)


def relaunch(pod: pool.Pod, keep: Sequence[str], runs: Sequence[str], attempts: Mapping[str, int],
             csv: Optional[str]) -> None:
    """Start ``runs`` on ``pod`` (its runs ``keep`` stay in its sweep as they are). This is
    where a run is launched again elsewhere: ``attempts`` carries each one's attempt."""
    from workflow.sweep.control import start_sweep

    with runtime.on_pod(pod):
        start_sweep(runtime.config(), runtime.agent(), runtime.fsm(), csv=csv, run_ids=set(keep) | set(runs),
                    launch_ids=set(runs), attempts=attempts)


def execute(cfg, move: Move, seen: pooled.Placement, say: Say,
            present: Optional[Sequence[str]] = None) -> List[str]:
    """Do one move (withdraw, start, record); the runs it moved. A run another client placed
    since ``seen`` was read is left alone (``Placement.same_placement``); a start that
    fails leaves its runs to a later round (withdrawn ones are then ``stranded``), and
    says why. ``present``: for a target that replaced a down pod, the runs its sweep lists
    (the old pod's are not there)."""
    pods = _by_name(cfg)
    if move.nodes:
        return _execute_gang(cfg, move, seen, say, pods)
    with turn(cfg):
        now = pooled.load(cfg)
        runs = [r for r in move.runs if now.same_placement(seen, r) and r not in now.ended]
        if move.source is not None and runs:
            try:
                runs = list(withdraw(pods[move.source], runs)["withdrawn"])
            except PodflowError as exc:
                say(f"{move.source}: its pending runs could not be withdrawn: {getattr(exc, 'message', exc)}")
                return []
        if not runs:
            return []
        if move.source is not None:  # it answers: its earlier files of these runs come first
            from workflow.sweep.mirror import pull_from

            why = pull_from(pods[move.source], runs)
            if why:
                say(f"{move.source}: the earlier files of {', '.join(runs)} were not brought ({why})")
        attempts = {r: now.attempt_of(r) + (1 if move.why == "recover" else 0) for r in runs}
        keep = [r for r in now.held_by(move.to) if r not in runs and (present is None or r in present)]
        try:
            relaunch(pods[move.to], keep, runs, attempts, now.csv)
        except PodflowError as exc:
            say(f"{move.to}: could not start {', '.join(runs)}: {getattr(exc, 'message', exc)}; "
                "they wait for another pod")
            return []
        left = {r: now.pod_of(r) for r in runs if move.why == "recover" and now.pod_of(r) != move.to}
        pooled.save(cfg, {r: move.to for r in runs}, attempts=attempts, left=left)
    source = f" from {move.source}" if move.source else (
        f" from {seen.pod_of(runs[0])} (down)" if move.why == "recover" else "")
    tries = sorted(set(attempts.values()))
    say(f"{move.to} took {', '.join(runs)}{source}" + (f" (attempt {tries[0]})" if tries != [1] else ""))
    return runs


def _execute_gang(cfg, move: Move, seen: pooled.Placement, say: Say, pods: Mapping[str, pool.Pod]) -> List[str]:
    """Re-place a multi-node run whole on ``move.nodes``: a new rendezvous (node 0's
    address, fresh ports, the probe), every node launched at the run's next attempt (one
    ``rdzv_id``), then the record: its new pods, and the down pods it left."""
    from workflow.sweep import multinode
    from workflow.sweep.control import start_sweep

    [run_id] = move.runs
    with turn(cfg):
        now = pooled.load(cfg)
        if not now.same_placement(seen, run_id) or run_id in now.ended:
            return []  # another client moved it since
        attempt = now.attempt_of(run_id) + 1
        targets = [pods[name] for name in move.nodes]
        try:
            nodes = pooled.rendezvous({run_id: move.nodes}, {}, targets, attempts={run_id: attempt})
            first = next(mine[run_id] for mine in nodes.values() if mine[run_id].rank == 0)
            multinode.probe_rendezvous({run_id: first}, pods)

            def start(pod):
                keep = set(now.held_by(pod.name)) | {r for r, gang in now.nodes.items() if pod.name in gang}
                return start_sweep(runtime.config(), runtime.agent(), runtime.fsm(), csv=now.csv,
                                   run_ids=keep | {run_id}, launch_ids={run_id}, attempts={run_id: attempt},
                                   nodes=nodes[pod.name])

            results = pool.fan_out(targets, start)
            refused = {r.pod.name: r.error for r in results if not r.ok}
            for line in multinode.end_unstarted({run_id: first}, refused, pods):
                say(line)
            pool.raise_failures(results)
        except PodflowError as exc:
            say(f"{', '.join(move.nodes)}: could not start {run_id} on {len(targets)} nodes: "
                f"{getattr(exc, 'message', exc)}; it waits for pods")
            return []
        old = list(now.nodes.get(run_id) or ())
        pooled.save(cfg, {run_id: first.pods[0]}, attempts={run_id: attempt},
                    left={run_id: [name for name in old if name not in first.pods]}, nodes={run_id: first.pods})
    say(f"{', '.join(first.pods)} took {run_id} on {len(first.pods)} nodes (it had {', '.join(old)}; "
        f"attempt {attempt})")
    return [run_id]


def cancel_stale(cfg, up: Mapping[str, object], placement: pooled.Placement, say: Say) -> None:
    """Withdraw and cancel, on pods that answer, copies of runs the record gives to another pod."""
    pods = _by_name(cfg)
    for name, st in up.items():
        stale = [r.id for r in st.runs if r.state in ("pending", "running")
                 and placement.pod_of(r.id, name) != name
                 and name not in placement.nodes.get(r.id, ())]  # a node of a multi-node run is no copy
        if not stale:
            continue
        done = withdraw(pods[name], stale, cancel=True)
        if done.get("withdrawn"):
            say(f"{name}: stale copies withdrawn ({', '.join(done['withdrawn'])}): "
                f"the record gives them to other pods")


def record_ends(cfg, up: Mapping[str, object], placement: pooled.Placement) -> pooled.Placement:
    """Keep in the record how each run ended on its pod (what is known if the pod dies)."""
    ended = {r.id: r.state for name, st in up.items() for r in st.runs
             if r.state in pooled.TERMINAL and placement.pod_of(r.id) == name and placement.ended.get(r.id) != r.state
             and r.id not in placement.nodes}  # node 0's end is not a multi-node run's
    ended.update(_gang_ends(up, placement))
    if not ended:
        return placement
    with turn(cfg):
        return pooled.save(cfg, {}, ended=ended)


def _gang_ends(up: Mapping[str, object], placement: pooled.Placement) -> Dict[str, str]:
    """Multi-node runs that ended, read on all their pods (``multinode.combine``), at their
    current attempt (a node's earlier end is not the re-placed run's)."""
    from workflow.sweep import multinode

    out: Dict[str, str] = {}
    for run_id, gang in placement.nodes.items():
        if not all(name in up for name in gang):
            continue
        entries = [next((r for r in up[name].runs if r.id == run_id), None) for name in gang]
        if any(e is None or int(e.attempt or 1) < placement.attempt_of(run_id) for e in entries):
            continue
        state = multinode.combine([{"rank": i, "state": e.state, "finished_at": e.finished_at}
                                   for i, e in enumerate(entries)])
        if state in pooled.TERMINAL and placement.ended.get(run_id) != state:
            out[run_id] = state
    return out


@dataclass
class Round:
    """One read of the pool and what was done about it."""

    results: List[pool.PodResult]
    moved: List[str]
    down: Dict[str, str]


class Keeper:
    """Reads the pool and balances it, round after round (sweep-wait, --watch, sweep-recover)."""

    def __init__(self, cfg, pods: Sequence[pool.Pod], *, metrics: Optional[Mapping[str, object]] = None,
                 recover: Optional[bool] = None, say: Say = print, health: Optional[Health] = None,
                 each: Optional[Callable[[object], object]] = None, replace: Optional[bool] = None):
        """``each(status)``: what a read keeps of a pod, in its context (default ``(status, None)``)."""
        self.cfg = cfg
        self.each = each or (lambda st: (st, None))
        self.pods = tuple(pods)
        self.metrics = dict(metrics or {})
        self.recover = bool(cfg.get("pool.recover", True)) if recover is None else recover
        self.say = say
        self.health = health or Health(float(cfg.get("pool.down_after_secs", 120)))
        self.replace = bool(cfg.get("pool.replace", False)) if replace is None else replace
        self.reported: Dict[str, str] = {}
        self.replaced: Dict[str, str] = {}
        """Pods replaced whose old runs still wait to be re-placed (name -> why it was down)."""
        self.unreplaced: Dict[str, PodflowError] = {}
        """Down pods whose replacement failed (name -> why): their runs go to the pods that are up."""

    def read(self, wait_secs: float = 0.0) -> List[pool.PodResult]:
        """Every pod's status, read at once; ``wait_secs``: a pod whose runner is running is
        read when it ends, or after that long (``control.sweep_status``)."""
        from workflow.sweep.control import sweep_status

        timeout = max(5.0, min(READ_TIMEOUT_SECS, self.health.down_after))
        return pool.fan_out(self.pods, lambda pod: self.each(sweep_status(runtime.agent(), metrics=self.metrics,
                                                                          timeout=timeout, wait_secs=wait_secs)))

    def round(self, balance: bool = True, wait_secs: float = 0.0) -> Round:
        # the record as it was before the pods were read: a run another client placed
        # meanwhile is left alone this round (these reads may predate its new start)
        seen = pooled.load(self.cfg)
        results = self.read(wait_secs)
        for r in results:
            self.health.observe(r, provider_says)
        down = {p.name: self.health.down(p.name) for p in self.pods if self.health.down(p.name)}
        for name, why in down.items():
            if self.reported.get(name) != why:
                self.say(f"{name} is down: {why}")
        self.reported = dict(down)
        if balance and self.replace and self.recover:
            results = self._replace(results, down)
        up = {r.pod.name: r.value[0] for r in results if r.ok}
        placement = record_ends(self.cfg, up, pooled.load(self.cfg))
        moved: List[str] = []
        failed = False
        if balance:
            cancel_stale(self.cfg, up, placement, self.say)
            gone = [name for name in down if name not in up] + list(self.replaced)
            moves = plan_moves(up, gone, placement, self.recover)
            for move in moves:
                done = execute(self.cfg, move, seen, self.say,
                               [r.id for r in up[move.to].runs] if move.to in self.replaced else None)
                moved += done
                if move.why == "recover" and len(done) < len(move.runs):
                    failed = True
            if moves and not failed:
                self.replaced.clear()  # a replaced pod's old runs have all found a pod
        return Round(results, moved, down)

    def _replace(self, results: List[pool.PodResult], down: Mapping[str, str]) -> List[pool.PodResult]:
        """Replace each down pod (cloud pools); the read of a replaced pod is its new pod's."""
        ready = [r.pod for r in results if r.ok]
        out = list(results)
        for i, r in enumerate(results):
            if r.ok or r.pod.name not in down or r.pod.name in self.replaced:
                continue
            try:
                replace_pod(r.pod, pool_sha(ready), self.say)
            except PodflowError as exc:
                before = self.unreplaced.get(r.pod.name)
                if before is None or str(before) != str(exc):  # tried again each round, said once
                    self.say(f"{r.pod.name}: no replacement: {getattr(exc, 'message', exc)}")
                self.unreplaced[r.pod.name] = exc
                continue
            self.unreplaced.pop(r.pod.name, None)
            self.replaced[r.pod.name] = down[r.pod.name]
            out[i] = self._read_one(r.pod)
            self.health.observe(out[i], provider_says)
        return out

    def _read_one(self, pod: pool.Pod) -> pool.PodResult:
        from workflow.sweep.control import sweep_status

        return pool.fan_out([pod], lambda p: self.each(sweep_status(runtime.agent(), metrics=self.metrics)))[0]

    def doc(self, rnd: Round) -> Dict[str, object]:
        statuses = [pool.PodResult(r.pod, value=r.value[0]) if r.ok else r for r in rnd.results]
        return pooled.merge(statuses, pooled.load(self.cfg))

    def wait(self, timeout_secs: Optional[float] = None, interval: float = 2.0,
             after: Optional[Callable[[Round], object]] = None) -> Round:
        """Rounds until every run of the record has ended (a pod that cannot be read and is
        not down yet is waited for). Without ``recover`` a pod that cannot be read ends the
        wait at once (its failure is the caller's to raise). ``after(round)``: called after
        each round (the demo kills a pod there). WaitTimeout (exit 5).

        A round starts every ``interval`` seconds: its reads of pods still running wait
        for their runner to end up to then (``read``), so the end of the last pod's
        runner ends the wait at once instead of at the next read."""
        deadline = None if timeout_secs is None else time.monotonic() + float(timeout_secs)
        while True:
            began = time.monotonic()
            rnd = self.round(wait_secs=interval)
            if after is not None:
                after(rnd)
            failed = [r for r in rnd.results if not r.ok]
            if failed and not self.recover:
                return rnd
            if not rnd.moved:
                doc = self.doc(rnd)
                # a pod that cannot be read ends the wait only once it is down (its runs moved)
                if all(rnd.down.get(r.pod.name) for r in failed) and doc["state"] != "running" and all(
                        run["state"] in pooled.TERMINAL for run in doc["runs"]):
                    return rnd
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"the sweep is still running after {timeout_secs}s "
                                      f"({doc['percent']:.0f}% done); it goes on",
                                      hint="wf sweep-wait waits again; wf sweep-status shows each run")
                time.sleep(max(0.0, began + interval - time.monotonic()))
