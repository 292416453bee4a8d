"""Readiness (``workflow/providers/readiness.py``) as a user meets it through ``wf pod-up``:
quiet while a pod boots, saying once what it waits for; the GPU check that fits the host."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess

import pytest
import yaml

from fakes.common import SilentPort, Timeline
from fakes.harness import WF, CloudProject
from fakes.vast import VastOffer

pytestmark = pytest.mark.ssh

#: the port accepts TCP at 0.3 s and says nothing until sshd answers at 2.5 s
SILENT_THEN_SSHD = Timeline(running=0.1, port=0.3, banner=2.5, auth=0.3)


@pytest.fixture
def vast(tmp_path, ssh_client_keys, ssh_session_dir):
    """Makes a project wired to a fake Vast API with one offer whose pod follows ``timeline``."""
    n = itertools.count()
    with contextlib.ExitStack() as stack:
        yield lambda timeline, **pod: stack.enter_context(CloudProject(
            "vastai", tmp_path / f"p{next(n)}", ssh_client_keys, ssh_session_dir,
            [VastOffer(1, timeline=timeline)], **pod))


def _wf(project, *args, timeout=120):
    return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout)


def test_port_open_before_sshd_answers_prints_no_traceback(vast):
    cp = vast(SILENT_THEN_SSHD)
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stderr
    assert "pod ready" in r.stdout
    for noise in ("Traceback", "Exception", "EOFError", "protocol banner"):
        assert noise not in r.stderr, r.stderr
    assert r.stderr.count("waiting for an SSH login") == 1, r.stderr
    assert "no SSH server answers yet" in r.stderr, r.stderr


def test_debug_shows_the_ssh_library_log(vast):
    cp = vast(SILENT_THEN_SSHD)
    r = cp.wf("--debug", "pod-up")
    assert r.returncode == 0, r.stderr
    assert "Error reading SSH protocol banner" in r.stderr  # paramiko's own record, asked for


def test_connect_to_a_port_where_no_sshd_answers_fails_quietly(ssh_pod, project):
    """The SSH transport's own connect (check-connection, every command after pod-up): the
    same silent port gives one error line and exit 4, none of the library's log."""
    ssh_pod.write_config(project, pod__connect_timeout_secs=2)
    ssh_pod.stop()
    silent = SilentPort(ssh_pod.port)
    try:
        r = _wf(project, "check-connection")
    finally:
        silent.close()
    assert r.returncode == 4, r.stderr
    assert "cannot reach" in r.stderr
    for noise in ("Traceback", "Exception (client)", "EOFError"):
        assert noise not in r.stderr, r.stderr


# ---------------------------------------------------------------- checkout.require_cuda and the host


@pytest.fixture
def cpu_only():
    assert shutil.which("nvidia-smi") is None, "this test needs a machine without an NVIDIA driver"


def test_cpu_only_ssh_host_is_ready_with_the_default_config(ssh_pod, project, cpu_only):
    """require_cuda defaults to auto: a host you already have needs no GPU unless it has a driver.
    (It used to wait pod.ready_timeout_secs, 600 s, for nvidia-smi; the subprocess timeout bounds that.)"""
    ssh_pod.write_config(project)
    r = _wf(project, "pod-up")
    assert r.returncode == 0, r.stderr
    assert "no NVIDIA driver: CPU only" in r.stderr


def test_require_cuda_true_on_a_cpu_only_ssh_host_fails_at_once(ssh_pod, project, cpu_only):
    ssh_pod.write_config(project, checkout={"require_cuda": True})
    r = _wf(project, "pod-up")
    assert r.returncode == 1, r.stderr
    assert "has no NVIDIA driver" in r.stderr and "checkout.require_cuda" in r.stderr
    assert "waiting for nvidia-smi" not in r.stderr
    assert "Traceback" not in r.stderr


def test_local_provider_with_the_default_config_and_with_require_cuda_true(project, cpu_only):
    conf = project / "configs" / "workflow.yaml"
    conf.write_text(yaml.safe_dump({"project": "loc", "pod": {"provider": "local"}}))
    r = _wf(project, "pod-up")
    assert r.returncode == 0, r.stderr
    assert _wf(project, "fsm-reset", "INIT", "--reason", "test").returncode == 0
    conf.write_text(yaml.safe_dump({"project": "loc", "pod": {"provider": "local"}, "checkout": {"require_cuda": True}}))
    r = _wf(project, "pod-up")
    assert r.returncode == 1, r.stderr
    assert "has no NVIDIA driver" in r.stderr and "checkout.require_cuda" in r.stderr


def test_booting_cloud_pod_says_it_waits_for_the_gpu_driver(vast):
    """A rented pod (require_cuda auto: required on a cloud pod) whose driver answers only
    7 s after the first nvidia-smi call: pod-up keeps waiting, says for what once, shows
    the last answer every few seconds, then succeeds."""
    cp = vast(Timeline(running=0.05, port=0.1, auth=0.2, gpus=7))
    del cp.config["checkout"]["require_cuda"]
    cp.write_config()
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("waiting for nvidia-smi -L to list the GPUs (nvidia-smi -L: exit 9") == 1, r.stderr
    assert "last answer: nvidia-smi -L: exit 9, 0 GPUs: NVIDIA-SMI has failed" in r.stderr, r.stderr
    assert "command runs; 1 GPU\n" in r.stderr


def test_cloud_pod_without_a_driver_is_given_up_naming_what_it_waited_for(vast):
    cp = vast(Timeline(running=0.05, port=0.1, auth=0.2), ready_timeout_secs=6)
    del cp.config["checkout"]["require_cuda"]
    cp.write_config()
    r = cp.wf("pod-up")
    assert r.returncode == 4, r.stderr  # no pod came up; the one rented is destroyed
    assert r.stderr.count("waiting for nvidia-smi -L to list the GPUs (nvidia-smi not found)") == 1, r.stderr
    assert "never ran a command within 6s (nvidia-smi not found)" in r.stderr
    assert cp.live_pods() == []
