"""push-data: manifest, upload, one-call verification, atomic placement, nothing re-sent —
with real rsync, on the local provider and over a real loopback sshd."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.datapush import MANIFEST_NAME, build_manifest

WF = str(Path(sys.executable).with_name("wf"))


def wf(project, *args, check=None):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def make_tree(root: Path) -> Path:
    (root / "images" / "nested").mkdir(parents=True)
    (root / "images" / "a.bin").write_bytes(os.urandom(200_000))
    (root / "images" / "nested" / "b.bin").write_bytes(os.urandom(3_000))
    (root / "dataset_info.json").write_text('{"name": "toy"}\n')
    (root / "empty.txt").write_bytes(b"")
    (root / "link.json").symlink_to("dataset_info.json")  # followed: data, not a link
    return root


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def pod(request, project):
    """``(project, data_dir on the pod)`` for the local provider or a loopback sshd."""
    if request.param == "local":
        (project / "configs" / "workflow.yaml").write_text("project: t\npod:\n  provider: local\n")
        return project, project / ".podflow" / "local-pod" / "data"
    ssh_pod = request.getfixturevalue("ssh_pod")
    ssh_pod.write_config(project)
    return project, ssh_pod.remote_dir / "data"


def test_manifest_has_relative_paths_sizes_and_sha256(tmp_path):
    src = make_tree(tmp_path / "toy")
    (src / MANIFEST_NAME).write_text("{}")  # a pod's manifest fetched back is not data
    m = build_manifest(src, "toy")
    got = {f.path: (f.size, f.sha256) for f in m.files}
    expect = {}
    for rel in ("images/a.bin", "images/nested/b.bin", "dataset_info.json", "empty.txt", "link.json"):
        data = (src / rel).read_bytes()
        expect[rel] = (len(data), hashlib.sha256(data).hexdigest())
    assert got == expect
    assert [f.path for f in m.files] == sorted(expect)
    doc = m.to_doc()
    assert doc["total_files"] == 5 and doc["total_bytes"] == sum(s for s, _ in expect.values())


def test_push_places_verified_data_and_second_push_sends_nothing(pod, tmp_path):
    project, data_dir = pod
    src = make_tree(tmp_path / "toy")
    first = json.loads(wf(project, "push-data", str(src), "--json", check=0).stdout)
    placed = data_dir / "toy"
    assert first["placed"] == str(placed) and first["files"] == 5
    assert first["rsync"]["files_transferred"] == 5
    for rel in ("images/a.bin", "images/nested/b.bin", "dataset_info.json", "link.json"):
        assert (placed / rel).read_bytes() == (src / rel).read_bytes()
    assert not (placed / "link.json").is_symlink()
    manifest = json.loads((placed / MANIFEST_NAME).read_text())
    assert manifest["name"] == "toy" and manifest["total_files"] == 5
    assert {f["path"]: f["sha256"] for f in manifest["files"]}["images/a.bin"] == \
        hashlib.sha256((src / "images" / "a.bin").read_bytes()).hexdigest()
    assert list((data_dir / ".incoming").iterdir()) == []  # staging swapped in, old copy gone

    again = json.loads(wf(project, "push-data", str(src), "--json", check=0).stdout)
    assert again["rsync"]["files_transferred"] == 0
    assert again["rsync"]["bytes_transferred"] == 0

    (src / "images" / "nested" / "b.bin").write_bytes(b"v2")
    third = json.loads(wf(project, "push-data", str(src), "--json", "--name", "toy", check=0).stdout)
    assert third["rsync"]["files_transferred"] == 1
    assert (placed / "images" / "nested" / "b.bin").read_bytes() == b"v2"


def test_byte_corrupted_on_pod_fails_verification_then_heals(pod, tmp_path):
    project, data_dir = pod
    src = make_tree(tmp_path / "toy")
    wf(project, "push-data", str(src), check=0)
    victim = data_dir / "toy" / "images" / "a.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[1234] ^= 0xFF
    with open(victim, "r+b") as fh:  # same inode, same size...
        fh.write(data)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...same mtime: rsync's quick check skips it

    bad = wf(project, "push-data", str(src), check=1)
    assert "images/a.bin" in bad.stderr and "sha256" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert victim.read_bytes() == bytes(data)  # the placed copy was left as it was, nothing half-placed
    assert (data_dir / "toy" / MANIFEST_NAME).exists()

    healed = json.loads(wf(project, "push-data", str(src), "--json", check=0).stdout)
    assert healed["resent"] == ["images/a.bin"]
    assert victim.read_bytes() == (src / "images" / "a.bin").read_bytes()


@pytest.mark.parametrize("name", ["../x", "a b", ".hidden", "x;rm -rf ~", "a/b"])
def test_bad_name_is_refused(project, tmp_path, name):
    (project / "configs" / "workflow.yaml").write_text("project: t\n")
    src = make_tree(tmp_path / "toy")
    proc = wf(project, "push-data", str(src), "--name", name, check=2)
    assert "invalid dataset name" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / ".podflow" / "local-pod" / "data").exists()


def test_missing_directory_is_bad_input(project, tmp_path):
    (project / "configs" / "workflow.yaml").write_text("project: t\n")
    proc = wf(project, "push-data", str(tmp_path / "nope"), check=2)
    assert "not a directory" in proc.stderr
