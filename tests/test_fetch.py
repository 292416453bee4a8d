"""fetch-run / fetch-all with real rsync, on the local provider and over a real loopback
sshd: copies, increments, a run still writing, checkpoints left out, bad ids, records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workflow.agent_client import AgentClient
from workflow.sweep.fetch import Fetcher
from workflow.transport.local import LocalTransport

WF = str(Path(sys.executable).with_name("wf"))


def wf(project, *args, check=None):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def wf_json(project, *args):
    return json.loads(wf(project, *args, "--json", check=0).stdout)


class Pod:
    def __init__(self, project: Path, outputs: Path, uid: int = -1, gid: int = -1):
        self.project, self.outputs, self.uid, self.gid = project, outputs, uid, gid
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.own(self.outputs)

    def own(self, path: Path) -> None:
        """Files made here by the test belong to the pod user (the agent writes beside them)."""
        if self.uid < 0:
            return
        os.chown(path, self.uid, self.gid)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                for n in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, n), self.uid, self.gid)

    def make_run(self, run: str, files: dict, state: str = "success") -> Path:
        d = self.outputs / run
        for rel, data in {"status.json": json.dumps({"id": run, "state": state}), **files}.items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
        self.own(d)
        return d

    @property
    def artifacts(self) -> Path:
        return self.project / "artifacts"


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def pod(request, project):
    if request.param == "local":
        (project / "configs" / "workflow.yaml").write_text("project: t\npod:\n  provider: local\n")
        return Pod(project, project / ".podflow" / "local-pod" / "outputs")
    ssh_pod = request.getfixturevalue("ssh_pod")
    ssh_pod.write_config(project)
    return Pod(project, ssh_pod.remote_dir / "outputs", ssh_pod.uid, ssh_pod.gid)


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fetch_run_copies_then_sends_only_what_changed(pod):
    run = pod.make_run("r1", {"stdout.log": "step 1\n", "metrics.json": "{}", "sub/a.bin": os.urandom(50_000)})
    first = wf_json(pod.project, "fetch-run", "r1")
    assert tree(pod.artifacts / "r1") == tree(run)
    assert first["complete"] and first["state"] == "success" and first["files"] == 4
    assert first["rsync"]["files_transferred"] == 4

    (run / "stdout.log").write_text("step 1\nstep 2\n")
    again = wf_json(pod.project, "fetch-run", "r1")
    assert again["rsync"]["files_transferred"] == 1 and again["transferred"] == 1
    assert tree(pod.artifacts / "r1") == tree(run)

    session = json.loads((pod.project / ".podflow" / "session.json").read_text())
    assert "r1" in session["fetched"]
    assert again["verified_by"] == "size+mtime"
    (run / "metrics.json").write_text('{"loss": 1}')
    hashed = wf_json(pod.project, "fetch-run", "r1", "--sha256")
    assert hashed["verified_by"] == "sha256" and hashed["complete"] and hashed["transferred"] == 1
    assert tree(pod.artifacts / "r1") == tree(run)


def test_exclude_checkpoints(pod):
    pod.make_run("r1", {"model.pt": b"w" * 100, "best.safetensors": b"s", "x.ckpt": b"c", "y.pth": b"p",
                        "checkpoint-100/optimizer.bin": b"o", "logs/checkpoints.txt": "kept",
                        "stdout.log": "ok\n"})
    doc = wf_json(pod.project, "fetch-run", "r1", "--exclude-checkpoints")
    assert sorted(tree(pod.artifacts / "r1")) == ["logs/checkpoints.txt", "status.json", "stdout.log"]
    assert doc["files"] == 3 and doc["checkpoints_excluded"]
    wf(pod.project, "fetch-run", "r1", check=0)  # and without the flag, everything
    assert "checkpoint-100/optimizer.bin" in tree(pod.artifacts / "r1")


def test_fetch_all_one_rsync_skips_control_dirs(pod):
    pod.make_run("a1", {"stdout.log": "a"})
    pod.make_run("b2", {"stdout.log": "b"}, state="running")
    for other in ("_control", "_tasks/t1", "_manifests"):
        (pod.outputs / other).mkdir(parents=True, exist_ok=True)
        (pod.outputs / other / "status.json").write_text("{}")
    (pod.outputs / "not-a-run").mkdir()  # no status.json
    pod.own(pod.outputs)
    table = wf(pod.project, "fetch-all", check=0).stdout
    assert "a1" in table and "b2" in table and "_tasks" not in table and "not-a-run" not in table
    assert sorted(p.name for p in pod.artifacts.iterdir() if not p.name.startswith(".")) == ["a1", "b2"]
    doc = wf_json(pod.project, "fetch-all")
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert runs["a1"]["complete"] and not runs["b2"]["complete"] and runs["b2"]["state"] == "running"
    assert doc["rsync"]["files_transferred"] == 0
    session = json.loads((pod.project / ".podflow" / "session.json").read_text())
    assert "a1" in session["fetched"]


@pytest.mark.parametrize("bad", ["../x", "a;rm -rf ~", "$(id)", ".hidden", "a/b", ""])
def test_bad_run_id_is_refused_without_traceback(project, bad):
    (project / "configs" / "workflow.yaml").write_text("project: t\n")
    proc = wf(project, "fetch-run", bad, check=2)
    assert "invalid run id" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / "artifacts").exists()


def test_unknown_run_is_named(pod):
    pod.make_run("r1", {})
    proc = wf(pod.project, "fetch-run", "nope", check=2)
    assert "nope" in proc.stderr and "r1" in proc.stderr


WRITER = textwrap.dedent("""
    import json, os, sys, time
    d, stop = sys.argv[1], sys.argv[2]  # writes until the test creates the stop file
    def atomic(path, data):
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".%d.tmp" % os.getpid())
        with open(tmp, "w") as fh:
            fh.write(data)
        os.replace(tmp, path)
    end, i = time.time() + 120, 0
    log = open(os.path.join(d, "stdout.log"), "a")
    while time.time() < end and not os.path.exists(stop):
        i += 1
        log.write("step %d loss=%f\\n" % (i, 1.0 / i) + "x" * 2000 + "\\n"); log.flush()
        atomic(os.path.join(d, "metrics.json"), json.dumps({"step": i, "pad": "y" * (i % 5000)}))
        with open(os.path.join(d, "big.bin"), "ab") as fh:
            fh.write(os.urandom(20000))
        if i % 20 == 0:
            atomic(os.path.join(d, "ckpt-%d.txt" % (i // 20)), "c" * 100000)
            old = os.path.join(d, "ckpt-%d.txt" % (i // 20 - 2))
            if os.path.exists(old):
                os.unlink(old)
        time.sleep(0.002)
    atomic(os.path.join(d, "status.json"), json.dumps({"state": "success"}))
""")


def test_fetch_run_while_the_run_still_writes(pod):
    run = pod.make_run("live", {"stdout.log": ""}, state="running")
    stop = run.parent / "stop-writer"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(stop)])
    try:
        partial = []
        for _ in range(3):
            doc = wf_json(pod.project, "fetch-run", "live")  # exit 0 every time
            if doc["state"] == "running":
                assert not doc["complete"]
            partial.append(doc)
        assert all(p["state"] == "running" and not p["complete"] for p in partial)
    finally:
        stop.touch()
        assert writer.wait(30) == 0
    pod.own(run)
    final = wf_json(pod.project, "fetch-run", "live")
    assert final["complete"] and final["state"] == "success" and not final["in_flux"]
    assert tree(pod.artifacts / "live") == tree(run)  # exactly: no stray temp files, nothing stale
    session = json.loads((pod.project / ".podflow" / "session.json").read_text())
    assert "live" in session["fetched"]


def test_a_file_that_arrives_wrong_is_fetched_again(tmp_path):
    """Library level: a copy damaged after rsync (same size and mtime) is caught by the
    SHA-256 check and re-fetched once."""
    outputs, artifacts = tmp_path / "outputs", tmp_path / "artifacts"
    (outputs / "r1").mkdir(parents=True)
    (outputs / "r1" / "status.json").write_text('{"state": "success"}')
    (outputs / "r1" / "w.bin").write_bytes(os.urandom(10_000))

    class Flaky(Fetcher):
        damaged = False

        def _rsync(self, *a, **kw):
            stats = super()._rsync(*a, **kw)
            target = artifacts / "r1" / "w.bin"
            if not self.damaged and target.exists():
                st = target.stat()
                data = bytearray(target.read_bytes())
                data[0] ^= 1
                target.write_bytes(data)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
                Flaky.damaged = True
            return stats

    t = LocalTransport()
    result = Flaky(t, AgentClient(t, str(outputs)), str(outputs), artifacts, sha256=True).fetch_run("r1")
    r = result.runs[0]
    assert r.refetched == ("w.bin",) and r.complete
    assert (artifacts / "r1" / "w.bin").read_bytes() == (outputs / "r1" / "w.bin").read_bytes()


@pytest.mark.ssh
def test_unreachable_pod_exits_4(ssh_pod, project):
    ssh_pod.write_config(project, pod__connect_timeout_secs=2)
    ssh_pod.stop()
    proc = wf(project, "fetch-run", "r1", check=4)
    assert "Traceback" not in proc.stderr
