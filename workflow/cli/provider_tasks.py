"""provider tasks: find offers, rent a pod and wait until it is usable, see it, take it down (SPEC §3, §7)."""

from __future__ import annotations

from workflow import runtime
from workflow.cli.boundary import print_json, wf_task
from workflow.cli.pods import POD_HELP, on_pods
from workflow.errors import InputError, UnsupportedAction


def _money(v) -> str:
    return "?" if v is None else f"${v:.3f}"


def _dur(secs) -> str:
    if secs is None:
        return "?"
    secs = int(max(0, secs))
    h, m = divmod(secs // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{secs % 60:02d}s"


@wf_task(help={"json": "print one JSON document: provider, spec, offers (cheapest first)"})
def offers(c, json=False):
    """List offers matching pod.offer (or its preset), cheapest first.

    Filters: pod.offer.gpu, num_gpus, min_gpu_ram_gb, min_reliability, max_price_per_hour,
    regions; or pod.offer.preset: api-only, inference-24g, finetune-40g. With
    pod.network: cluster, offers of pod.count pods on one private network (the price is
    theirs together; the filters apply to each pod).
    """
    from workflow.providers.lifecycle import list_offers

    doc = list_offers(runtime.config())
    if json:
        print_json({**doc, "offers": [o.as_dict() for o in doc["offers"]]})
        return
    rows = doc["offers"]
    if not rows:
        print(f"no {doc['provider']} offers match")
        return
    print(f"{'offer':<28} {'gpu':<24} {'n':>2} {'GB':>5} {'rel':>5} {'$/h':>8}  region")
    for o in rows:
        rel = "-" if o.reliability is None else f"{o.reliability:.3f}"
        ram = "-" if o.gpu_ram_gb is None else f"{o.gpu_ram_gb:.0f}"
        print(f"{o.id:<28} {o.gpu[:24]:<24} {o.num_gpus:>2} {ram:>5} {rel:>5} {o.price_per_hour:>8.3f}  {o.region or '-'}")


@wf_task(help={"json": "print one JSON document: pod, endpoint, offer, skipped offers, stage timings",
               "pod": POD_HELP})
def pod_up(c, json=False, pod=None):
    """Rent a pod (or use pod.target / the session's pod) and wait until SSH really runs a command.

    Offers are tried cheapest first, at most pod.max_offer_attempts; one taken meanwhile
    or never usable within pod.ready_timeout_secs is skipped (and destroyed if it was
    rented). Ends in state POD_READY. With pod.count N, N pods come up at once; with
    pod.network: cluster too, they are rented together on one private network (runpod:
    an instant cluster; vastai: an overlay network on one physical cluster); a network
    whose pods do not all become usable is ended as a whole and the next offer tried.

    Usable means an SSH command runs; with checkout.require_cuda (auto: on a rented
    cloud pod, or a host with nvidia-smi) `nvidia-smi -L` must list GPUs. A host you
    already have (ssh, local) without an NVIDIA driver fails at once when it is true.
    While it waits it says once what for, then the last answer every few seconds; the
    SSH library's own log stays off the terminal: `wf --debug pod-up` shows it.
    """
    from workflow import pool
    from workflow.providers import clusters
    from workflow.providers.lifecycle import pod_up as up
    from workflow.providers.lifecycle import start_watchdog

    cfg = runtime.config()
    together, network = len(pool.select(cfg, pod)) > 1, clusters.wanted(cfg)

    def up_pods():
        return on_pods(pod, lambda: up(runtime.config(), with_watchdog=not together), render=_print_up,
                       to_doc=lambda res: res.as_dict(), json=json, raise_errors=not (together or network))

    results = clusters.bring_up(cfg, up_pods) if network else up_pods()
    if not together:
        pool.raise_failures(results)
    if together:  # every pod is up: each watchdog is told the whole pool's price (pod.max_cost_usd)
        on_pods(pod, lambda: start_watchdog(runtime.config()), pods=[r.pod for r in results if r.ok],
                earlier=[r for r in results if not r.ok])


def _print_up(res) -> None:
    if str(runtime.config().get("progress", "")) == "quiet":  # otherwise progress already said so
        for s in res.skipped:
            print(f"skipped offer {s['offer']}: {s['reason']}")
    pod = res.pod
    what = f"{res.provider} pod {pod.id}" if pod and res.provider not in ("local", "ssh") else res.provider
    print(f"pod ready: {what} at {res.endpoint} in {res.seconds:.1f}s (state {res.state})")
    if pod and pod.price_per_hour is not None:
        print(f"price: {_money(pod.price_per_hour)}/h")


@wf_task(help={"json": "print one JSON document: provider state, endpoint, price_per_hour, uptime_secs, "
                       "spent_usd, fsm state, ttl", "pod": POD_HELP})
def pod_status(c, json=False, pod=None):
    """Show the pod: provider state, endpoint, uptime, price per hour and spend so far, FSM state, ttl.

    The price is the provider's for the live pod (pod.price_per_hour for ssh and local);
    spend counts the time it ran, from .podflow/ledger.jsonl (see 'wf cost'). Pods on one
    private network (pod.network: cluster) that all ended without podflow (their watchdogs:
    autostop, pod.ttl, pod.max_cost_usd) take their network with them here: a Vast overlay
    outlives its instances, and an instance's own API key cannot delete it.
    """
    import sys

    from workflow.providers import clusters
    from workflow.providers.lifecycle import pod_status as status

    ended = clusters.tidy(runtime.config())
    if ended is not None:
        print(f"network {ended.id}: every pod of it ended; the network is deleted", file=sys.stderr)
    on_pods(pod, lambda: status(runtime.config()), render=_print_status, to_doc=lambda doc: doc, json=json)


def _print_status(doc) -> None:
    pod = doc.get("pod")
    if pod is None:
        print(f"provider: {doc['provider']}: no pod for this project" + (f" ({doc['error']})" if doc.get("error") else ""))
        return
    print(f"provider: {doc['provider']}  pod: {pod['id']}" + (f" ({pod['name']})" if pod.get("name") else ""))
    print(f"state: {pod['state']} ({pod.get('provider_state') or '-'})")
    print(f"endpoint: {doc.get('endpoint') or '-'}")
    if pod.get("cluster_id"):
        print(f"network: {pod['cluster_id']}" + (f", private address {pod['private_addr']}" if pod.get("private_addr")
                                                 else ""))
    if doc["provider"] not in ("local", "ssh"):
        print(f"uptime: {_dur(doc.get('uptime_secs'))}")
    if doc.get("price_per_hour") is not None:
        print(f"price: {_money(doc.get('price_per_hour'))}/h, spent so far: {_money(doc.get('spent_usd'))}")
    elif doc["provider"] in ("local", "ssh"):
        print("price: unknown (set pod.price_per_hour to count this host's cost)")
    if doc["provider"] not in ("local", "ssh"):
        if doc.get("ttl"):
            left = doc.get("ttl_left_secs")
            print(f"ttl: {doc['ttl']} ({'expired' if left is not None and left <= 0 else _dur(left) + ' left'})")
    fsm = doc.get("fsm_state") or f"unknown ({doc.get('fsm_error', 'pod not reachable')})"
    print(f"workflow state: {fsm}" + ("  (adopted: no state file before)" if doc.get("adopted") else ""))
    if doc.get("autostop"):
        print(autostop_line(doc["autostop"]))
    if doc.get("stop_or_destroy"):
        print(f"note: {doc['stop_or_destroy']}")


def autostop_line(a) -> str:
    """``pod-status``'s watchdog line: what it did, or when it will act and why not yet."""
    if a.get("error"):
        return f"autostop: unknown ({a['error']})"
    d = a.get("decision")
    if d:
        return f"autostop: {d.get('action')} at {d.get('at')}: {d.get('reason')}" + (
            f" ({d['error']})" if d.get("error") else "")
    if not a.get("running"):
        return "autostop: the watchdog is not running (wf pod-up or wf bootstrap starts it)"
    when = f"{a.get('action')} in {_dur(a['acts_in_secs'])}" if a.get("acts_in_secs") is not None else a.get("action")
    return f"autostop: {when}" + (f"; not yet: {a['not_yet']}" if a.get("not_yet") else "")


@wf_task(help={"destroy": "destroy the pod for good (its disk is lost) instead of stopping it",
               "force": "with --destroy: destroy even if runs on the pod were never fetched",
               "json": "print one JSON document", "pod": POD_HELP})
def pod_down(c, destroy=False, force=False, json=False, pod=None):
    """Stop the pod (disk kept), or --destroy it; refuses to destroy unfetched runs without --force.

    Lium pods, and RunPod pods without a volume, can only be destroyed. Pods on one
    private network (pod.network: cluster) end together: --destroy checks every pod, then
    ends the network (RunPod: deletes the instant cluster; Vast: destroys the instances and
    deletes the overlay); they cannot be stopped. The pod's kept connection (see
    disconnect) ends too.
    """
    from workflow.providers import clusters
    from workflow.providers.lifecycle import pod_down as down

    try:
        if clusters.known(runtime.config()) is None:
            on_pods(pod, lambda: down(runtime.config(), destroy=destroy, force=force), render=_print_down,
                    to_doc=lambda doc: doc, json=json)
            return
        _network_down(pod, destroy, force, json)
    finally:
        from workflow.cli import zygote

        runtime.disconnect()
        zygote.stop(runtime.config().root)


def _network_down(pod, destroy: bool, force: bool, json: bool) -> None:
    """pod-down for pods on one private network: every pod checked, then all ended at once."""
    from workflow.providers import clusters
    from workflow.providers.lifecycle import pod_down as down

    cfg = runtime.config()
    network = clusters.known(cfg)
    if not destroy:
        raise UnsupportedAction(network.provider, "stop",
                                hint=f"the pods of network {network.id} end together: 'wf pod-down --destroy'")
    if pod not in (None, ""):
        raise InputError(f"--pod {pod}: the pods of network {network.id} end together",
                         hint="'wf pod-down --destroy' without --pod ends them all")
    checked = on_pods(None, lambda: down(runtime.config(), destroy=True, force=force, together=True))
    clusters.take_down(cfg, forced=force)
    docs = [dict(r.value, name=r.pod.name) for r in checked]
    if json:
        print_json({"pods": docs})
        return
    for doc in docs:
        print(f"{doc['name']}: {doc['message']}" if doc["action"] == "none" else
              f"{doc['name']}: destroyed {doc['provider']} pod {doc['pod_id']} with network {network.id}"
              + (" (forced)" if force else ""))


def _print_down(doc) -> None:
    if doc["action"] == "none":
        print(doc["message"])
    elif doc["provider"] == "local":
        print(f"local pod {'terminated' if doc['action'] == 'destroy' else 'stopped'}: {doc['message']}")
    elif doc["action"] == "stop":
        print(f"stopped {doc['provider']} pod {doc['pod_id']} ({doc['message']})")
    else:
        print(f"destroyed {doc['provider']} pod {doc['pod_id']}" + (" (forced)" if doc.get("forced") else ""))
