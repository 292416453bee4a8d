"""A link cut while commands go through the pod's kept connection: the command fails with
exit 4 in the same bound as a direct one, the kept connection ends, and once the link is
back the next command reconnects (and leaves a new kept connection)."""

from __future__ import annotations

import json
import threading

import pytest

from netns import NetnsPod, netns_available
from relhelpers import has_traceback, wait_until, wf_proc
from test_rel_network import BOUND_SECS, CONNECT_TIMEOUT

pytestmark = pytest.mark.ssh


class WarmNetnsPod(NetnsPod):
    ns_prefix = "wfwarm"


@pytest.fixture
def wpod(ssh_client_keys, ssh_session_dir, project):
    if not netns_available():
        pytest.skip("needs root, iproute2 with netns, /usr/sbin/sshd")
    pod = WarmNetnsPod(ssh_client_keys, ssh_session_dir)
    try:
        pod.start()
        pod.write_config(project, pod__connect_timeout_secs=CONNECT_TIMEOUT)
        yield pod
    finally:
        pod.cleanup()


def _server(project):
    from workflow.transport.kept import client as kept

    for _name, lock in kept.servers(project):
        pid, _ = kept._owner(lock)
        if pid:
            return pid
    return None


def test_link_cut_while_warm_fails_in_bounded_time_and_the_next_command_works(wpod, project):
    r = wf_proc("check-connection", cwd=project)
    assert r.code == 0, r.text
    pid = wait_until(lambda: _server(project), 20, what="a kept connection")
    r = wf_proc("task-run", "--id", "longjob", "--cmd", "sleep 8; echo finished-after-the-cut", cwd=project)
    assert r.code == 0, r.text
    logins = wpod.accepted_logins()
    assert logins == 2  # check-connection's own and the kept connection's: task-run opened none
    threading.Timer(1.0, wpod.cut).start()
    r = wf_proc("task-wait", "--id", "longjob", cwd=project)
    assert r.code == 4, r.text
    assert r.secs <= 1.0 + BOUND_SECS, f"task-wait through the kept connection took {r.secs:.1f}s after a cut"
    assert "lost" in r.err and not has_traceback(r.text)
    wait_until(lambda: _server(project) != pid, BOUND_SECS, what="the kept connection to end")
    wpod.restore()
    r = wf_proc("task-wait", "--id", "longjob", "--json", cwd=project)
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["state"] == "success" and "finished-after-the-cut" in doc["log_tail"]
    assert wpod.accepted_logins() > logins  # it logged in afresh
    assert wait_until(lambda: _server(project) not in (None, pid), 20, what="a new kept connection")
