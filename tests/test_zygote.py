"""The warm CLI server (``workflow/cli/zygote.py``, ``workflow/cli/entry.py``) against a
real sshd: a served command prints what a process of its own prints (bytes, exit code);
a changed source file, a killed server and a stopped one all send the command down the
normal path within a bound, with no visible difference but time. Its idle end, its
refusal of another user and Ctrl-C through it are in test_kept.py (same fixture)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from test_kept import alive, gone_within, warm, wf, zygote_pid, zygote_served  # noqa: F401
from workflow.cli import entry, zygote

#: A fallback costs the wait for an answer plus a command's own start, on a loaded 2-core machine.
FALLBACK_BOUND = entry.ANSWER_SECS + 15


@pytest.mark.ssh
def test_served_commands_print_what_their_own_process_prints(warm):
    pod, project, _ = warm
    logins = pod.accepted_logins()
    cases = [  # (argv, exit code): ok, --json to a pipe, bad input (2), refused by the state machine (3)
        (["fsm-status"], 0), (["fsm-status", "--json"], 0), (["task-list", "--json"], 0),
        (["task-status", "--id", "nope", "--json"], 2), (["fsm-status", "--pod", "nope"], 2),
        (["fsm-status", "--bogus"], 2), (["sweep-stop"], 3),
    ]
    for argv, code in cases:
        before = len(zygote_served(project))
        served = wf(project, *argv)
        assert zygote_served(project)[before:] == [argv[0]], argv  # it ran in the server's child
        alone = wf(project, *argv, env={"WF_ZYGOTE": "0"})
        assert (served.returncode, served.stdout, served.stderr) == (code, alone.stdout, alone.stderr), argv
        assert alone.returncode == code
    assert pod.accepted_logins() == logins
    before = len(zygote_served(project))
    for argv in (["--help"], ["remote-exec", "true"], ["fsm-status", "disconnect"]):
        assert wf(project, *argv).returncode == 0
    assert len(zygote_served(project)) == before  # not served: help, a chain with another task, others


def test_what_is_served(monkeypatch):
    from workflow.cli import ns

    assert entry.SERVED <= set(ns.task_names)
    assert entry.servable(["sweep-status", "--json"]) and entry.servable(["task-logs", "--id", "a", "-f"])
    for argv in ([], ["--help"], ["sweep-status", "--watch"], ["sweep-status", "-wj"], ["mcp"], ["pod-up"]):
        assert not entry.servable(argv), argv
    monkeypatch.setenv("WF_ZYGOTE", "0")
    assert not entry.servable(["fsm-status"])


@pytest.mark.ssh
def test_a_changed_source_file_ends_it_and_the_command_runs_by_itself(warm):
    pod, project, _ = warm
    cli = zygote_pid(project)
    source = Path(zygote.__file__).with_name("fsm_tasks.py")
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        before = len(zygote_served(project))
        r = wf(project, "fsm-status", "--json")
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert r.returncode == 0 and r.stderr == "" and '"state": "INIT"' in r.stdout
    assert len(zygote_served(project)) == before
    assert gone_within(cli, 10)
    assert "ended: a source file or the python changed" in (project / ".podflow" / "cli" / "zygote.log").read_text()
    assert zygote_pid(project) != cli  # the command, run by itself, left a fresh one


@pytest.mark.ssh
def test_a_killed_or_stopped_server_is_routed_around_within_a_bound(warm):
    pod, project, _ = warm
    cli = zygote_pid(project)
    os.kill(cli, signal.SIGKILL)
    assert gone_within(cli, 5)
    started = time.monotonic()
    r = wf(project, "task-list", "--json")
    assert r.returncode == 0 and r.stderr == "" and time.monotonic() - started < FALLBACK_BOUND, r.stderr
    cli = zygote_pid(project)  # the command, run by itself, left a fresh one
    os.kill(cli, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = wf(project, "fsm-status", "--json")
        assert r.returncode == 0 and r.stderr == "" and time.monotonic() - started < FALLBACK_BOUND, r.stderr
        assert gone_within(cli, 5)  # the wedged one was ended (ours: checked by pid and cmdline)
    finally:
        if alive(cli):
            os.kill(cli, signal.SIGCONT)


def test_a_config_parsed_ahead_serves_only_the_same_text_and_as_a_copy():
    from workflow.config import yamlfile

    text = "project: ahead\npod:\n  provider: ssh\n"
    yamlfile.parse_ahead(text)
    try:
        doc = yamlfile.read_yaml(text)
        assert doc.data == {"project": "ahead", "pod": {"provider": "ssh"}} and doc.lines[("pod", "provider")] == 3
        doc.data["pod"]["provider"] = "local"
        assert yamlfile.read_yaml(text).data["pod"]["provider"] == "ssh"
        assert yamlfile.read_yaml(text.replace("ahead", "other")).data["project"] == "other"
    finally:
        yamlfile._ahead.pop(text, None)
