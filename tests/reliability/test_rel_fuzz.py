"""Bad input, fuzzed with hypothesis, through the ``wf`` CLI in-process (the Invoke
Program with workflow.cli's collection) on the ``local`` provider, plus a few real
subprocess checks.

Configs built from the schema's own keys (wrong types, wrong values, misspellings,
broken YAML), sweep CSVs, env files, task and run ids, and corrupt or truncated pod
files (a task's status.json, the state file): every one ends with a clear message and
a SPEC §3 exit code, never a traceback, and never changes what is on the pod.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from figures import record
from relhelpers import SPEC_CODES, has_traceback, wf_inproc, wf_proc

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "workflow" / "config" / "schema.json").read_text())
FUZZ = settings(max_examples=int(os.environ.get("WF_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS = {}


def _leaves(node, prefix=()):
    for key, sub in (node.get("properties") or {}).items():
        if "properties" in sub:
            yield from _leaves(sub, prefix + (key,))
        else:
            yield prefix + (key,)


LEAVES = sorted(_leaves(SCHEMA))
NASTY = st.sampled_from(["", " ", "-1", "0", "1e999", "nan", "yes", "~", "null", "[]", "{}", "$(touch CANARY)",
                         "`id`", "a;b", "../../etc/passwd", "\x00", "é", "\n", "'\"", "*", "%s%n", "-" * 300])
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False), NASTY, st.text(max_size=20),
    st.lists(st.one_of(st.integers(), NASTY), max_size=3),
    st.dictionaries(st.sampled_from(["a", "B_1", "1x", "x-y", "", "ok"]), st.one_of(st.integers(), NASTY),
                    max_size=3),
)


def _misspell(key: str, how: int) -> str:
    if len(key) < 2:
        return key + "x"
    i = how % len(key)
    ops = [key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key[:i] + key[i:].upper(), key + "s",
           key.replace("_", "-") if "_" in key else key[::-1]]
    out = ops[how % len(ops)]
    return out if out != key else key + "_x"


def _set(doc, path, value):
    node = doc
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


@st.composite
def config_docs(draw):
    doc = {"project": "fz"}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(LEAVES))
        if draw(st.booleans()):
            bad = list(path)
            j = draw(st.integers(0, len(bad) - 1))
            bad[j] = _misspell(bad[j], draw(st.integers(0, 50)))
            path = tuple(bad)
        _set(doc, path, draw(VALUES))
    return doc


def _check(r, allowed=SPEC_CODES - {0}, what=""):
    assert r.code in allowed, (what, r.code, r.text)
    assert not has_traceback(r.text), (what, r.text)
    if r.code:
        assert r.err.strip().startswith("error:") or "error" in r.err.lower(), (what, r.err)


@pytest.fixture
def local_project(project):
    (project / "configs" / "workflow.yaml").write_text("project: fz\n")
    return project


# ---------------------------------------------------------------- configs


@FUZZ
@given(doc=config_docs())
def test_fuzzed_configs(local_project, doc):
    path = local_project / "configs" / "workflow.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    r = wf_inproc("config-validate")
    _check(r, {0, 2}, doc)
    if r.code == 2:
        assert "workflow.yaml" in r.err, r.err
    COUNTS["configs"] = COUNTS.get("configs", 0) + 1


@FUZZ
@given(text=st.text(alphabet=string.printable + "é\t", max_size=200))
def test_fuzzed_yaml_text(local_project, text):
    (local_project / "configs" / "workflow.yaml").write_text("project: fz\n" + text)
    _check(wf_inproc("config-show"), {0, 2}, text)
    COUNTS["yaml texts"] = COUNTS.get("yaml texts", 0) + 1


def test_misspelt_keys_get_did_you_mean(local_project):
    n = 0
    for path in LEAVES:
        if path[-1] in ("password", "api_key") or len(path[-1]) < 4:
            continue
        doc = {"project": "fz"}
        bad = path[:-1] + (path[-1][:-1],)  # drop the last letter
        if bad in LEAVES:  # pod.hosts -> pod.host: a key of its own, not a misspelling
            continue
        _set(doc, bad, 1)
        (local_project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(doc))
        r = wf_inproc("config-validate")
        assert r.code == 2 and not has_traceback(r.text), (bad, r.text)
        assert "did you mean" in r.err.lower() and path[-1] in r.err, (bad, r.err)
        assert ":%d" % (len(bad) + (1 if bad[0] > "project" else 0)) in r.err or "line" in r.err or ":" in r.err
        n += 1
    COUNTS["misspelt keys (did you mean)"] = n


# ---------------------------------------------------------------- env files

ENV_LINES = st.lists(st.one_of(
    st.sampled_from(["WF__POD__PORT=abc", "WF__POD__PORT=22", "export WF__PROGRESS=quiet", "WF__PROGRESS=loud",
                     "=x", "1BAD=2", "NOEQUALS", "WF__NOPE__X=1", "RUN_TIMEOUT_SECS=-5", "WF_FSM_ENFORCE=maybe",
                     "A='unterminated", 'B="x\\"', "C=$(touch CANARY)", "# comment", "", "D=`id`",
                     "REMOTE_SSH_PASSWORD=in-a-file", "WF__SWEEP__MAX_RETRIES=1.5"]),
    st.text(alphabet=string.printable, max_size=40)), max_size=6)


@FUZZ
@given(lines=ENV_LINES)
def test_fuzzed_env_files(local_project, lines):
    (local_project / "configs" / "workflow.env").write_text("\n".join(lines) + "\n")
    r = wf_inproc("config-show")
    _check(r, {0, 2}, lines)
    assert not (local_project / "CANARY").exists()
    COUNTS["env files"] = COUNTS.get("env files", 0) + 1


# ---------------------------------------------------------------- CSVs

CELLS = st.one_of(st.sampled_from(["r1", "r1", "R1", "-x", "a" * 129, "", "configs/a.yaml", "../x.yaml", "1", "-3",
                                   "x", "\"", "'unclosed", "lr=1 'b c'", "$(touch CANARY)", "a,b", "0", "1.5",
                                   "\u00e9", "\r", "ok.run-1_2"]),
                  st.text(alphabet=string.printable, max_size=12))


@FUZZ
@given(header=st.sampled_from(["run_id,config,seed,overrides,notes", "run_id,config,seed,overrides,notes,gpus,timeout_secs",
                               "run_id,config,seed", "id,config,seed,overrides,notes", "", "# c\nrun_id,config,seed,overrides,notes"]),
       rows=st.lists(st.lists(CELLS, min_size=1, max_size=8), max_size=5))
def test_fuzzed_csvs(local_project, header, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    for row in rows:
        w.writerow(row)
    (local_project / "s.csv").write_text(header + "\n" + buf.getvalue())
    r = wf_inproc("sweep-validate", "--csv", "s.csv")
    _check(r, {0, 2}, (header, rows))
    if r.code == 2:
        assert "s.csv" in r.err, r.err
    assert not (local_project / "CANARY").exists()
    COUNTS["CSVs"] = COUNTS.get("CSVs", 0) + 1


# ---------------------------------------------------------------- ids

IDS = st.one_of(st.sampled_from(["", "-", "-rf", ".", "..", "../x", "a/b", "a b", "a;touch CANARY", "$(touch CANARY)",
                                 "`touch CANARY`", "a|b", "a&&b", "a\nb", "*", "a" * 129, "ok", "x.y-z_1", "\u00e9"]),
                st.text(max_size=30))


@FUZZ
@given(task_id=IDS)
def test_fuzzed_task_and_run_ids(local_project, task_id):
    for argv in (("task-status", f"--id={task_id}"), ("task-kill", f"--id={task_id}"),
                 ("task-wait", f"--id={task_id}", "--timeout-secs=1"), ("fetch-run", "--run-id", task_id)):
        r = wf_inproc(*argv)
        _check(r, {2}, argv)
    assert not (local_project / "CANARY").exists()
    COUNTS["task/run ids (x4 commands)"] = COUNTS.get("task/run ids (x4 commands)", 0) + 4


# ---------------------------------------------------------------- corrupt pod files

GOOD_STATUS = {"id": "t", "state": "running", "exit_code": None, "command": "sleep 1", "created_at": "2024-01-01T00:00:00Z",
               "started_at": "2024-01-01T00:00:00Z", "finished_at": None, "timeout_secs": None, "pid": 1,
               "heartbeat_at": "2024-01-01T00:00:00Z", "attempt": 1, "wrapper_pid": 1, "nonce": "n"}
GOOD_STATE = {"state": "CHECKED_OUT", "updated_at": "2024-01-01T00:00:00Z",
              "history": [{"from": "INIT", "to": "CHECKED_OUT", "trigger": "fsm-reset", "at": "x", "by": "t"}]}


def _corrupt(good: dict):
    raw = json.dumps(good, indent=2).encode()
    return st.one_of(
        st.integers(0, len(raw) - 1).map(lambda n: raw[:n]),  # truncated
        st.binary(max_size=64),
        st.sampled_from([b"null", b"[]", b"42", b'"x"', b"{}", b'{"state": 7}', b'{"state": "NOPE", "history": []}',
                         b'{"state": "running"}', b'{"state": "CHECKED_OUT", "history": "x"}', b"\xff\xfe",
                         b'{"state": "success", "exit_code": "zero"}', b'{"id": "t", "state": null}',
                         b'{"state": "running", "pid": "abc", "wrapper_pid": -1, "created_at": "yesterday"}']),
        st.dictionaries(st.sampled_from(list(good)), st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                                              st.lists(st.integers(), max_size=2)), max_size=6)
        .map(lambda d: json.dumps(d).encode()),
    )


def _pod_outputs(project):
    return project / ".podflow" / "local-pod" / "outputs"


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(raw=_corrupt(GOOD_STATUS))
def test_corrupt_task_status(local_project, raw):
    d = _pod_outputs(local_project) / "_tasks" / "t"
    d.mkdir(parents=True, exist_ok=True)
    (d / "command.sh").write_text("sleep 1\n")
    (d / "status.json").write_bytes(raw)
    for argv in (("task-status", "--id", "t"), ("task-list", "--json"), ("task-wait", "--id", "t", "--timeout-secs", "0.2"),
                 ("task-kill", "--id", "t"), ("task-run", "--id", "t", "--cmd", "true")):
        r = wf_inproc(*argv)
        assert r.code in SPEC_CODES and not has_traceback(r.text), (argv, raw, r.text)
        if argv[0] == "task-list" and r.code == 0:
            json.loads(r.out)
        after = (d / "status.json").read_bytes()
        if after != raw:
            # the only change allowed: a well-formed running/pending doc repaired to lost
            doc = json.loads(after)
            assert doc["state"] == "lost", (argv, raw, after)
            break
    COUNTS["corrupt status.json (x5 commands)"] = COUNTS.get("corrupt status.json (x5 commands)", 0) + 5


@FUZZ
@given(raw=_corrupt(GOOD_STATE))
def test_corrupt_state_file(local_project, raw):
    path = _pod_outputs(local_project) / "_control" / "workflow_state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    for argv in (("fsm-status", "--json"), ("fsm-reset", "BOOTSTRAPPED", "--reason", "fuzz"), ("sweep-stop",),
                 ("sweep-start",)):
        r = wf_inproc(*argv)
        assert r.code in SPEC_CODES and not has_traceback(r.text), (argv, raw, r.text)
        if argv[0] != "fsm-reset":
            assert path.read_bytes() == raw, (argv, raw)
        elif path.read_bytes() != raw:  # fsm-reset may repair only a readable document
            doc = json.loads(path.read_bytes())
            assert doc["state"] == "BOOTSTRAPPED" and isinstance(doc["history"], list)
            path.write_bytes(raw)
    COUNTS["corrupt state file (x4 commands)"] = COUNTS.get("corrupt state file (x4 commands)", 0) + 4


# ---------------------------------------------------------------- real subprocesses


def test_a_few_real_subprocess_checks(local_project):
    cases = [
        ("pod:\n  port: [1, 2]\n", ("config-validate",), {2}),
        ("pod:\n  provder: ssh\n", ("config-show",), {2}),
        ("project: fz\n", ("task-status", "--id", "../etc"), {2}),
        ("project: fz\n", ("fetch-run", "a;b"), {2}),
        ("project: fz\n", ("fsm-reset", "NOT_A_STATE"), {2}),
        ("project: fz\n", ("task-run", "--id", "ok", "--cmd", "true", "--timeout-secs", "soon"), {2}),
    ]
    for yml, argv, codes in cases:
        (local_project / "configs" / "workflow.yaml").write_text(yml)
        r = wf_proc(*argv, cwd=local_project, timeout=60)
        assert r.code in codes and not has_traceback(r.text), (argv, r.code, r.text)
        assert r.err.startswith("error:"), (argv, r.err)
    COUNTS["real subprocess checks"] = len(cases)


def teardown_module(module):
    for what, n in COUNTS.items():
        record("inputs", what, count=n)
