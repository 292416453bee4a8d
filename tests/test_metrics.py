"""Metrics from real training scripts (SPEC §11): every supported format, the
configuration echo left out, series and best, incremental parsing of a big log, and a
minimal-GPT-style script through a real sweep."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from workflow.agent.metrics import CHUNK, LogMetrics, compile_patterns, parse_metrics_line, read_run, run_summary

#: Verbatim shape of a minimal-GPT (nanoGPT-style) train.py log, configuration echo first.
MINIGPT_LOG = """\
Overriding config with config/train_shakespeare_char.py:
# train a miniature character-level shakespeare model
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
Overriding: learning_rate = 0.003
Overriding: max_iters = 40
Overriding: dropout = 0
Namespace(batch_size=12, block_size=64, lr=0.003)
tokens per iteration will be: 16,384
found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)
number of parameters: 0.80M
step 0: train loss 4.2874, val loss 4.2823
iter 0: loss 4.2649, time 3541.29ms, mfu -100.00%
iter 10: loss 3.2051, time 22.21ms, mfu 0.84%
step 20: train loss 3.0612, val loss 3.1024
iter 20: loss 3.0531, time 22.20ms, mfu 0.90%
iter 30: loss 2.9900, time 22.10ms, mfu 0.91%
step 40: train loss 2.9003, val loss 3.2000
"""


def feed(text, **kw):
    m = LogMetrics(series=True, **kw)
    for line in text.splitlines():
        m.feed_line(line)
    return m


def test_minigpt_log_gives_loss_series_and_no_configuration_echo():
    m = feed(MINIGPT_LOG)
    assert m.series["train_loss"] == [[0, 4.2874], [20, 3.0612], [40, 2.9003]]
    assert m.series["val_loss"] == [[0, 4.2823], [20, 3.1024], [40, 3.2]]
    assert m.series["loss"] == [[0, 4.2649], [10, 3.2051], [20, 3.0531], [30, 2.99]]
    assert m.series["time"][-1] == [30, 22.1] and m.series["mfu"][0] == [0, -100.0]
    assert set(m.last) == {"train_loss", "val_loss", "loss", "time", "mfu"}  # no learning_rate, dropout, ...
    assert m.best() == {"name": "val_loss", "value": 3.1024, "step": 20}
    assert m.best("train_loss") == {"name": "train_loss", "value": 2.9003, "step": 40}
    assert m.best("mfu", "max") == {"name": "mfu", "value": 0.91, "step": 30}
    assert m.total == 40  # max_iters from the echo: progress, not a metric


def test_each_log_format():
    assert parse_metrics_line('{"step": 10, "loss": 0.48}') == {"step": 10, "loss": 0.48}
    assert parse_metrics_line("{'loss': 0.5, 'learning_rate': 5e-05, 'epoch': 1.0}") == {
        "loss": 0.5, "learning_rate": 5e-05, "epoch": 1.0}
    assert parse_metrics_line("{'eval_loss': nan}") is None  # not a literal: skipped, never a crash
    assert parse_metrics_line("step=3 loss=0.25 acc=97.5%") == {"step": 3, "loss": 0.25}
    assert parse_metrics_line("epoch 1: train_loss=1.5e-3, val_loss=0.2") == {"train_loss": 1.5e-3, "val_loss": 0.2}
    assert parse_metrics_line("Step 7/100 | loss: 0.5 | grad norm 1.25") == {"loss": 0.5, "grad_norm": 1.25}
    assert parse_metrics_line("[podflow] run x started (CUDA_VISIBLE_DEVICES='0')") is None
    assert parse_metrics_line("hello world") is None and parse_metrics_line("{'a': [1, 2]}") is None
    # HF Trainer: dict lines, the step being the epoch; a JSON config dump first is an echo.
    m = feed('{"model": "gpt2", "lr": 0.0003}\n'
             "{'loss': 2.5, 'learning_rate': 5e-05, 'epoch': 0.5}\n"
             "{'eval_loss': 2.25, 'epoch': 1.0}\n{'loss': 2.0, 'learning_rate': 4e-05, 'epoch': 1.0}\n")
    assert "lr" not in m.last and m.series["loss"] == [[0.5, 2.5], [1.0, 2.0]]
    assert m.best() == {"name": "eval_loss", "value": 2.25, "step": 1.0}
    # key=value: the values seen only before the first step/loss line are the configuration.
    m = feed("lr=0.1 warmup=100\nstep=1 loss=0.9\nstep=2 loss=0.7 lr=0.05\n")
    assert m.last == {"step": 2, "loss": 0.7, "lr": 0.05} and m.series["lr"] == [[2, 0.05]]
    # A digit inside a name is part of the name (line shapes are not mixed up).
    m = feed("step 1: layer1 norm 0.5\nstep 1: layer2 norm 0.25\nstep 2: layer1 norm 0.4\n")
    assert m.last == {"layer1_norm": 0.4, "layer2_norm": 0.25}


def test_patterns_with_named_groups():
    rx = compile_patterns([r"Accuracy on (?:\w+): (?P<acc>[0-9.]+)% after (?P<step>\d+) batches"])
    m = feed("starting\nAccuracy on dev: 71.5% after 100 batches\nAccuracy on dev: 80.25% after 200 batches\n",
             patterns=rx)
    assert m.series["acc"] == [[100, 71.5], [200, 80.25]]
    assert m.best("acc", "max") == {"name": "acc", "value": 80.25, "step": 200}
    with pytest.raises(ValueError, match="no named group"):
        compile_patterns([r"acc (\d+)"])
    with pytest.raises(ValueError, match="not a regular expression"):
        compile_patterns([r"(?P<acc>[0-9"])


def test_tqdm_lines_give_progress_and_eta(tmp_path):
    (tmp_path / "stdout.log").write_bytes(
        b"Epoch 1:  10%|#         | 10/100 [00:05<00:45,  2.00it/s]\r"
        b"Epoch 1:  45%|####5     | 45/100 [00:22<01:30,  2.00it/s]\r")
    out = run_summary(str(tmp_path), str(tmp_path / "state.json"))
    assert out["progress"] == {"step": 45, "total": 100, "fraction": 0.45, "eta_secs": 90}
    # step/max_iters known from the log: ETA from the elapsed time.
    run = tmp_path / "minigpt"
    run.mkdir()
    (run / "stdout.log").write_text(MINIGPT_LOG.rsplit("iter 20", 1)[0])
    out = run_summary(str(run), str(run / "state.json"), elapsed_secs=100.0)
    assert out["progress"]["step"] == 20 and out["progress"]["total"] == 40 and out["progress"]["eta_secs"] == 100.0


def test_metrics_jsonl_wins_over_the_log(tmp_path):
    (tmp_path / "stdout.log").write_text("step 1: loss 9.0, tok/s 100\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n')
    m, _ = read_run(str(tmp_path), series=True)
    assert m.series["loss"] == [[1, 0.5], [2, 0.25]] and m.last["tok/s"] == 100


def test_a_200_mb_log_is_read_once_then_only_its_new_bytes(tmp_path):
    log = tmp_path / "stdout.log"
    state = tmp_path / "_control" / "metrics.json"
    first = b"iter 0: loss 5.0000, time 20.0ms\n"
    noise = b"W1202 dataloader.py:123] worker batch prefetch took longer than expected (slow disk?)\n"
    with open(log, "wb") as fh:
        fh.write(first)
        block = noise * 10000 + b"iter 1: loss 4.0000, time 20.0ms\n"
        while fh.tell() < 200 << 20:
            fh.write(block)
    # A status out of time stops after one chunk; the next one goes on from there.
    out = run_summary(str(tmp_path), str(state), deadline=time.monotonic())
    offset = json.loads(state.read_text())["log"]["offset"]
    assert not out["metrics_complete"] and 0 < offset <= CHUNK and out["best"]["value"] == 4.0
    out = run_summary(str(tmp_path), str(state))
    assert out["metrics"] == {"loss": 4.0, "time": 20.0} and out["best"] == {"name": "loss", "value": 4.0, "step": 1}
    assert out["metrics_complete"] and json.loads(state.read_text())["log"]["offset"] == log.stat().st_size
    # Rewrite the first line in place (same file, same size): a re-read would see it.
    with open(log, "r+b") as fh:
        fh.write(b"iter 0: loss 0.0001, time 20.0ms\n")
        fh.seek(0, os.SEEK_END)
        fh.write(b"iter 2: loss 3.5000, time 21.0ms\n")
    out = run_summary(str(tmp_path), str(state))
    assert out["metrics"] == {"loss": 3.5, "time": 21.0}
    assert out["best"] == {"name": "loss", "value": 3.5, "step": 2}  # 0.0001 was never read again
    # A budget of 0 bytes (a status out of time) shows what was parsed before.
    with open(log, "ab") as fh:
        fh.write(b"iter 3: loss 3.0000, time 21.0ms\n")
    out = run_summary(str(tmp_path), str(state), budget_bytes=0)
    assert out["metrics"]["loss"] == 3.5 and not out["metrics_complete"]
    # A log replaced by a new file is read from its start.
    log.unlink()
    log.write_text("iter 0: loss 9.0\n")
    assert run_summary(str(tmp_path), str(state))["metrics"] == {"loss": 9.0}


def test_a_new_attempt_echoes_its_configuration_again():
    m = feed(MINIGPT_LOG + "[podflow] run r attempt 2 started by sweep s2 (CUDA_VISIBLE_DEVICES='')\n"
             + "Overriding: learning_rate = 0.001\nstep 50: train loss 2.5, val loss 2.75\n")
    assert "learning_rate" not in m.last and m.last["val_loss"] == 2.75


MINIGPT = textwrap.dedent('''\
    """A minimal-GPT-style train.py: a config file, --key=value overrides echoed as
    nanoGPT's configurator does, then eval and train lines."""
    import json, math, sys, time
    config = {"learning_rate": 0.001, "max_iters": 20, "eval_interval": 10, "dropout": 0.1}
    print("Overriding config with %s:" % sys.argv[1])
    config.update(json.load(open(sys.argv[1])).get("minigpt", {}))
    for arg in sys.argv[2:]:
        key, value = arg[2:].split("=", 1)
        print("Overriding: %s = %s" % (key, value))
        config[key] = type(config[key])(value)
    print("tokens per iteration will be: 16,384", flush=True)
    lr = config["learning_rate"]
    for it in range(config["max_iters"] + 1):
        loss = 4.0 * math.exp(-lr * 10 * it) + 1.0
        if it % config["eval_interval"] == 0:
            print("step %d: train loss %.4f, val loss %.4f" % (it, loss, loss + 0.1 + (0.5 if it == 40 else 0)))
        print("iter %d: loss %.4f, time %.2fms, mfu %.2f%%" % (it, loss, 20.0 + it % 3, 0.5), flush=True)
        time.sleep(0.01)
    ''')


def test_minigpt_script_through_a_real_sweep(project):
    from test_sweep_run_helpers import SweepProject, runs_by_id

    sp = SweepProject(project, {"sweep": {"entrypoint": "minigpt.py", "args": ["{config}"],
                                          "metrics": {"patterns": [r"tokens per iteration will be: (?P<tokens_per_iter>[\d]+)"]}}},
                      """\
                      run_id,config,seed,overrides,notes
                      slow,configs/tiny.json,0,--learning_rate=0.001 --max_iters=40,
                      fast,configs/tiny.json,0,--learning_rate=0.01 --max_iters=40,
                      """)
    (sp.repo / "examples" / "minigpt.py").write_text(MINIGPT)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=0)
    runs = runs_by_id(sp.status())
    fast, slow = runs["fast"], runs["slow"]
    assert set(fast["metrics"]) == {"train_loss", "val_loss", "loss", "time", "mfu", "tokens_per_iter"}
    assert fast["metrics_complete"] is True
    assert fast["metrics"]["loss"] == pytest.approx(4.0 * 2.718281828 ** -4 + 1.0, abs=1e-3)
    # val loss is worst at the last eval (step 40): the best is at step 30.
    assert fast["best"] == {"name": "val_loss", "value": round(4.0 * 2.718281828 ** -3 + 1.1, 4), "step": 30}
    assert fast["best"]["value"] < slow["best"]["value"]
    text = sp.wf("sweep-status", check=0).stdout
    assert "best val_loss" in text and "learning_rate" not in text and "max_iters" not in text
    # sweep.metrics.primary/mode choose what "best" means.
    sp.write_config({"sweep": {"entrypoint": "minigpt.py", "args": ["{config}"],
                               "metrics": {"primary": "mfu", "mode": "max"}}})
    assert runs_by_id(sp.status())["fast"]["best"] == {"name": "mfu", "value": 0.5, "step": 0}
    sp.write_config({"sweep": {"entrypoint": "minigpt.py", "args": ["{config}"],
                               "metrics": {"patterns": ["loss (\\d+)"]}}})
    bad = sp.wf("sweep-status")
    assert bad.returncode == 2 and "no named group" in bad.stderr


def test_minigpt_on_an_ssh_pod_then_the_report_from_fetched_files_alone(ssh_pod, project):
    """The same script on a real sshd pod: metrics and best over SSH, then fetch-all and a
    report made with the pod stopped."""
    import subprocess

    from test_sweep_run_helpers import WF

    repo = ssh_pod.remote_dir / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "tiny.json").write_text("{}\n")
    (repo / "minigpt.py").write_text(MINIGPT)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    for p in [repo, *repo.rglob("*")]:
        os.lchown(p, ssh_pod.uid, ssh_pod.gid)
    (project / "sweeps").mkdir()
    (project / "sweeps" / "s.csv").write_text("run_id,config,seed,overrides,notes\n"
                                              "g1,configs/tiny.json,0,--learning_rate=0.01 --max_iters=40,\n")
    ssh_pod.write_config(project, sweep={"csv": "sweeps/s.csv", "workdir": ".", "entrypoint": "minigpt.py",
                                         "launcher": "python", "args": ["{config}"]})

    def wf(*args, code=0):
        p = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=180)
        assert p.returncode == code, f"wf {args}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    wf("fsm-reset", "CHECKED_OUT", "--reason", "checkout made by the test")
    wf("sweep-start")
    wf("sweep-wait", "--timeout-secs", "120")
    run = json.loads(wf("sweep-status", "--json"))["runs"][0]
    assert run["best"] == {"name": "val_loss", "value": round(4.0 * 2.718281828 ** -3 + 1.1, 4), "step": 30}
    assert "learning_rate" not in run["metrics"] and run["metrics"]["train_loss"] == pytest.approx(1.0733, abs=1e-3)
    wf("fetch-all")
    ssh_pod.stop()
    out = wf("sweep-report", "--out", "r.html")
    assert "1 run(s)" in out
    page = (project / "r.html").read_text()
    assert 'id="chart-val_loss"' in page and "--learning_rate=0.01 --max_iters=40" in page


STEPPED_LINES = [  # every one of these shapes carries its step: a chunk of them is scanned in C
    "iter {i}: loss {v:.4f}, time {t:.2f}ms, mfu {u:.2f}%",
    "step {i}: train loss {v:.4f}, val loss {w:.4f}",
    "{{'loss': {v:.3f}, 'learning_rate': {u:.2e}, 'epoch': {e}}}",
    "W1202 dataloader.py:123] prefetch took longer than expected",
    "layer{k} norm",
    '{{"step": {i}, "eval_loss": {v:.3f}}}',
    "Epoch {i}: 100 batches",
    "step {i}/{n}: loss {v}",
    "EPOCH {i}: val loss {w:.4f}",
    "",
    "{k}%|#   | {i}/{n} [00:{k}<09:59, 1.50it/s]\r{k}%|#   | {j}/{n} [00:{k}<09:58, 1.50it/s]",  # tqdm redraws
    " 9%|#   | {j}/{n} [00:01<00:09, 5.00batch/s]",
    "step {i}: lr {r}",  # a few values, equal ones written differently (the earliest line is the best)
]
EVERY_LINE = STEPPED_LINES + [  # and lines no step comes with, a nan, a tqdm redraw
    "acc={u:.3f} grad_norm={v}",
    "layer{k} norm={u:.3f}",
    "iter {i}: loss nan, time 20.00ms, mfu 0.50%",
]


#: ``lr`` values, equal ones written differently, a new min and max in later chunks (ties there).
LR_STRINGS = [["0.1", "0.10", "1e-1"], ["0.01", "0.010", "1e-2", "0.3", "3e-1"], ["0.001", "1e-3", "0.5", "5e-1"]]
KEY_VALUE_LINES = [  # steps nowhere: each metric line's count is its x (a scanned shape of its own)
    "loss={v:.4f} lr={r} grad_norm={w:.3f}",
    "W1202 dataloader.py:123] prefetch took longer than expected",
    "{k}%|#   | {i}/{n} [00:{k}<09:59, 1.50it/s]\r{k}%|#   | {j}/{n} [00:{k}<09:58, 1.50it/s]",
    "",
]


@pytest.mark.parametrize("kinds", [EVERY_LINE, STEPPED_LINES, KEY_VALUE_LINES],
                         ids=["every-format", "scanned-in-C", "key-value-without-steps"])
def test_the_grouped_and_scanned_paths_give_what_line_by_line_gives(tmp_path, monkeypatch, kinds):
    """Status on the pod scans chunks by shape (or groups their lines); the report reads
    line by line (series): both must agree on every last value, best and step, whatever
    the mix of formats, ties between shapes included, with reads that end in the middle
    of a line and tqdm redraws (``\\r``) anywhere; the configuration echo is no metric."""
    import random

    from workflow.agent import metrics

    monkeypatch.setattr(metrics, "CHUNK", 40000)  # many chunks, each read ending inside a line
    monkeypatch.setattr(metrics, "SCAN_BYTES", 15000)  # and scanned in pieces
    monkeypatch.setattr(metrics, "LEARN_BYTES", 6000)
    monkeypatch.setattr(metrics, "MAX_POINTS", 300)  # series thinned many times
    scanned = []  # chunks taken by a scan
    take = LogMetrics._take

    def counted_take(self, *args):
        took = take(self, *args)
        scanned.extend([1] if took else [])
        return took

    monkeypatch.setattr(LogMetrics, "_take", counted_take)
    rnd = random.Random(7)
    lines = MINIGPT_LOG.splitlines()[:11]
    for i in range(8000):
        v = rnd.choice([rnd.random() * 5, rnd.randrange(4), 1.5, 5, float("nan")])
        if i < 2500:  # past the head read line by line: the extremes, ties between shapes, come later
            v = 2 + rnd.random()
        elif v != v and kinds is not EVERY_LINE:
            v = 2.5
        lines.append(rnd.choice(kinds).format(i=i, v=v, w=rnd.random() * 5, t=rnd.random() * 30, u=rnd.random(),
                                              e=i / 100, k=rnd.randrange(3), n=8000, j=i + 1,
                                              r=rnd.choice(LR_STRINGS[i // 3000])))
    # A form feed is a line end to str.splitlines: the best loss hides behind one (no line of a known shape).
    lines.insert(-300, "W1202 flushed\x0c" + kinds[0].format(i=7700, v=0.0001, w=1, t=1, u=0.5, r="0.1"))
    if kinds is not KEY_VALUE_LINES:  # a shape seen once early and once more as the very last line: its last values win
        lines[20:20] = ['{"step": 5, "loss": 2.5}']
        lines.append('{"step": 8000, "loss": 2.25}')
    log = tmp_path / "stdout.log"
    log.write_text("\n".join(lines) + "\n")
    fast, report, slow = LogMetrics(), LogMetrics(series=True), LogMetrics(series=True)
    fast.feed_file(str(log))
    report.feed_file(str(log))
    for line in log.read_bytes().decode().splitlines():  # the reference: one line at a time
        slow.feed_line(line)
    a, b = fast.state(), slow.state()
    for key in ("last", "lo", "hi", "steps", "step", "total", "count", "tqdm"):
        assert a[key] == b[key] == report.state()[key], key
    assert report.series == slow.series and list(report.series) == list(slow.series)  # every point, thinned alike
    assert b["total"] == (40 if kinds is KEY_VALUE_LINES else 8000)  # max_iters of the echo, else step i/8000
    assert len(b["last"]) >= 3 and b["tqdm"][1] == 8000 and b["tqdm"][0] > 7000
    assert "dropout" not in a["last"] and "max_iters" not in a["last"] and a["lo"]["loss"][0] <= 0.0001
    if kinds is not EVERY_LINE:
        pieces = log.stat().st_size // 15000
        assert len(scanned) >= pieces - 3, "the pieces past the first LEARN_BYTES were not scanned"


def test_a_long_lived_agent_reuses_ended_rows_only_while_their_files_are_unchanged(tmp_path):
    """``podagent serve`` keeps sweep-status rows of ended runs between ops; any change to a
    run's status, log or metrics.jsonl (even the same size) is read afresh."""
    from workflow.agent import sweep_status

    outputs = tmp_path / "outputs"
    runs = []
    for i in range(3):
        d = outputs / f"r{i}"
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"id": f"r{i}", "state": "success", "exit_code": 0}))
        (d / "stdout.log").write_text("{'loss': 0.5}\n")
        runs.append({"run_id": f"r{i}", "out_dir": str(d), "launch": True})
    (outputs / "_control" / "sweep").mkdir(parents=True)
    (outputs / "_control" / "sweep" / "plan.json").write_text(json.dumps({"sweep_id": "s", "runs": runs}))

    def rows():
        return {r["id"]: (r["state"], r["metrics"]) for r in sweep_status.status({"outputs_dir": str(outputs)})["runs"]}

    sweep_status._ENDED_ROWS.clear()
    assert rows() == {f"r{i}": ("success", {"loss": 0.5}) for i in range(3)}
    assert len(sweep_status._ENDED_ROWS) == 3
    status = outputs / "r0" / "status.json"
    before = status.stat()
    with open(status, "r+") as fh:  # rewritten in place: same inode, same size
        fh.write(json.dumps({"id": "r0", "state": "failed", "exit_code": 0}) + " ")
    assert (status.stat().st_ino, status.stat().st_size) == (before.st_ino, before.st_size)
    with open(outputs / "r1" / "stdout.log", "a") as fh:
        fh.write("{'loss': 0.7}\n")
    (outputs / "r2" / "metrics.jsonl").write_text('{"loss": 0.1}\n')
    assert rows() == {"r0": ("failed", {"loss": 0.5}), "r1": ("success", {"loss": 0.7}),
                      "r2": ("success", {"loss": 0.1})}
