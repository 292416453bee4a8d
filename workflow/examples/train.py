"""A tiny real training job for podflow's demo and tests.

    torchrun --standalone --nproc_per_node=2 train.py configs/tiny.json --seed=0 --out_dir=out/x lr=0.05
    python train.py configs/tiny.json                       # world size 1, no process group

An MLP learns a fixed random "teacher" on synthetic data. DDP with nccl on GPUs, gloo on
CPU, chosen automatically. Rank 0 prints one JSON line per logged step and appends it
to ``<out_dir>/metrics.jsonl``; ``<out_dir>/checkpoint.pt`` is written (atomically) every
``ckpt_every`` steps and at the end, and a run started again with a checkpoint there
continues from its step: podflow's resume (a run relaunched after ``lost``, retried,
or moved to another pod finds its earlier files in its out dir; its first log line says
``"resumed": true`` and the step, with ``WF_ATTEMPT``). ``<out_dir>/summary.json`` gets
this script's keys (other keys already in it are kept).

Arguments: the config (JSON) path, ``--seed``, ``--out_dir``, then ``key=value``
overrides of config keys (values parsed as JSON, else taken as text). For tests:
``fail=1`` (or ``--fail``) raises after the first step; ``sleep_secs=S`` sleeps S seconds
after every step. ``WF_OUT_DIR``, ``WF_RUN_ID`` and ``WF_SEED`` are used when set and
the flags are not given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

DEFAULTS = {
    "steps": 20,
    "batch_size": 32,
    "lr": 0.01,
    "in_dim": 16,
    "hidden": 32,
    "layers": 2,
    "log_every": 5,
    "ckpt_every": 10,
    "sleep_secs": 0.0,
    "fail": 0,
    "note": "",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="JSON config file")
    p.add_argument("--seed", type=int, default=None, help="default: $WF_SEED, else the config's seed, else 0")
    p.add_argument("--out_dir", default=None, help="default: $WF_OUT_DIR, else out/<run_id>")
    p.add_argument("--fail", action="store_true", help="fail on purpose after the first step (same as fail=1)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out_dir>/checkpoint.pt (done whenever one is there; for sweep.resume_args)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value")
    return p.parse_intermixed_args(argv)


def load_config(path, overrides):
    with open(path, encoding="utf-8") as fh:
        loaded = json.load(fh)
    if not isinstance(loaded, dict):
        raise SystemExit(f"error: {path}: the config must be a JSON object")
    cfg = dict(DEFAULTS, **loaded)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: override {item!r} is not key=value")
        if key not in cfg and key != "seed":
            raise SystemExit(f"error: unknown config key {key!r} in override {item!r}; known: {', '.join(sorted(cfg))}")
        old = cfg.get(key)
        if isinstance(old, str):
            value = text
        else:
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
        cfg[key] = value
    return cfg


def atomic_write_json(path, doc):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def make_model(cfg):
    layers, dim = [], cfg["in_dim"]
    for _ in range(max(0, int(cfg["layers"]) - 1)):
        layers += [nn.Linear(dim, cfg["hidden"]), nn.Tanh()]
        dim = cfg["hidden"]
    layers.append(nn.Linear(dim, 1))
    return nn.Sequential(*layers)


def batch(cfg, seed, step, rank, device):
    """Deterministic synthetic data: the same batch for (seed, step, rank) on every run."""
    teacher = torch.Generator().manual_seed(seed)
    w = torch.randn(cfg["in_dim"], 1, generator=teacher)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(cfg["batch_size"], cfg["in_dim"], generator=g)
    y = torch.tanh(x @ w) + 0.01 * torch.randn(cfg["batch_size"], 1, generator=g)
    return x.to(device), y.to(device)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.fail:
        cfg["fail"] = 1
    run_id = os.environ.get("WF_RUN_ID") or os.path.splitext(os.path.basename(args.config))[0]
    seed = args.seed if args.seed is not None else int(os.environ.get("WF_SEED") or cfg.get("seed", 0))
    out_dir = args.out_dir or os.environ.get("WF_OUT_DIR") or os.path.join("out", run_id)

    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    rank, world, local_rank = 0, 1, 0
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if distributed:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    main_rank = rank == 0
    if main_rank:
        os.makedirs(out_dir, exist_ok=True)

    torch.manual_seed(seed)
    model = make_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]), momentum=0.9)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    start_step = 0
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        start_step = int(ckpt["step"])
    if distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    else:
        ddp = model

    def emit(doc):
        if main_rank:
            line = json.dumps(doc, sort_keys=True)
            print(line, flush=True)
            with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def save(step):
        if main_rank:
            tmp = ckpt_path + ".tmp"
            torch.save({"step": step, "model": model.state_dict(), "optim": opt.state_dict(), "seed": seed}, tmp)
            os.replace(tmp, ckpt_path)
        if distributed:
            dist.barrier()

    steps = int(cfg["steps"])
    emit({"event": "start", "run_id": run_id, "step": start_step, "steps": steps, "world_size": world,
          "backend": backend if distributed else "none", "device": str(device), "seed": seed,
          "resumed": start_step > 0, "attempt": int(os.environ.get("WF_ATTEMPT") or 1),
          "resume_asked": bool(args.resume or os.environ.get("WF_RESUME") == "1")})
    t0 = time.time()
    loss_value = float("nan")
    loss_fn = nn.MSELoss()
    for step in range(start_step + 1, steps + 1):
        x, y = batch(cfg, seed, step, rank, device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        loss_t = loss.detach().clone()
        if distributed:
            dist.all_reduce(loss_t)
            loss_t /= world
        loss_value = float(loss_t)
        if step % int(cfg["log_every"]) == 0 or step == steps or step == start_step + 1:
            emit({"step": step, "loss": round(loss_value, 6), "lr": float(cfg["lr"]),
                  "elapsed_secs": round(time.time() - t0, 3)})
        if int(cfg["fail"]):
            raise RuntimeError(f"failing on purpose at step {step} (fail=1)")
        if step % int(cfg["ckpt_every"]) == 0 and step != steps:
            save(step)
        if float(cfg["sleep_secs"]) > 0:
            time.sleep(float(cfg["sleep_secs"]))
    save(max(steps, start_step))

    if main_rank:
        summary_path = os.path.join(out_dir, "summary.json")
        summary = {}
        if os.path.exists(summary_path):
            try:
                with open(summary_path, encoding="utf-8") as fh:
                    summary = json.load(fh)
            except ValueError:
                summary = {}
        summary.update({
            "run_id": run_id, "final_loss": loss_value if steps > start_step else summary.get("final_loss"),
            "steps": max(steps, start_step), "resumed_from_step": start_step, "world_size": world,
            "seed": seed, "device": str(device), "train_secs": round(time.time() - t0, 3),
            "note": cfg.get("note", ""),
        })
        atomic_write_json(summary_path, summary)
        emit({"event": "done", "step": max(steps, start_step), "final_loss": summary["final_loss"]})
    if distributed:
        dist.barrier()  # no rank leaves while another still works (rank 0 writes the summary)
        dist.destroy_process_group()
    return 0


def end_process(code):
    """Exit without interpreter finalization, once everything is written and flushed.

    Why: gloo's worker threads (``pt_gloo_runloop``) drop the last reference to a
    finished collective on their own time, and that frees Python objects (a tensor's
    wrapper, the captured thread-local state), so they take the GIL. Once CPython
    (< 3.14) has begun finalizing, a thread taking the GIL is ended with
    ``pthread_exit``, whose unwinding through the C++ destructor (noexcept) is
    ``std::terminate``: "terminate called without an active exception", SIGABRT, and
    torchrun reports a finished run failed. ``destroy_process_group`` does not stop
    those threads (gloo joins them only when the group object is freed, and the DDP
    model still holds it). With no finalization there is nothing for them to race;
    ``os._exit`` ends every thread at once. The race made deterministic under gdb:
    bench/gloo_teardown/.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    end_process(main())
