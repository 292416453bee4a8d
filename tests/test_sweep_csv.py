"""workflow/sweep/csvfile.py and the sweep-csv-template / sweep-validate tasks."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.errors import ExitCode, InputError
from workflow.sweep import SweepCsvError, SweepRow, parse_sweep_csv, read_sweep_csv, validate_run_id, write_template
from workflow.sweep.csvfile import TEMPLATE

HEADER = "run_id,config,seed,overrides,notes\n"
WF = [sys.executable, "-c", "from workflow.cli.main import main; main()"]


def problems(text: str):
    with pytest.raises(SweepCsvError) as info:
        parse_sweep_csv(text, source="s.csv")
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return [(p.line, p.message) for p in info.value.problems]


def lines_of(text: str):
    return [line for line, _ in problems(text)]


def test_plain_rows():
    rows = parse_sweep_csv(HEADER + "a,c.json,1,lr=0.1 steps=5,first\nb,c.json,2,,\n")
    assert rows == [
        SweepRow(line=2, run_id="a", config="c.json", seed=1, overrides=("lr=0.1", "steps=5"), notes="first"),
        SweepRow(line=3, run_id="b", config="c.json", seed=2, overrides=(), notes=""),
    ]


def test_quoted_commas_quotes_and_newlines_in_notes():
    text = HEADER + 'a,c.json,1,,"one, two"\nb,c.json,2,,"say ""hi"""\nc,c.json,3,,"multi\nline\nnote"\nd,c.json,4,,after\n'
    rows = parse_sweep_csv(text)
    assert [r.notes for r in rows] == ["one, two", 'say "hi"', "multi\nline\nnote", "after"]
    # the record after a 3-line note starts on physical line 7
    assert [r.line for r in rows] == [2, 3, 4, 7]


def test_overrides_with_shell_metacharacters_are_literal_separate_args():
    values = ["note=a, b", 'q="x"', "x=a;b", "cmd=$(rm -rf /)", "tick=`id`", "pipe=a|b", "hash=#1"]
    buf = io.StringIO()
    import shlex

    csv.writer(buf, lineterminator="\n").writerows([
        ["run_id", "config", "seed", "overrides", "notes"],
        ["r1", "c.json", "0", shlex.join(values), "n"],
    ])
    (row,) = parse_sweep_csv(buf.getvalue())
    assert row.overrides == tuple(values)
    # and written by hand, the way a user types it
    (row,) = parse_sweep_csv(HEADER + 'r1,c.json,0,"note=""a, b"" \'x=a;b\' y=$(id)",n\n')
    assert row.overrides == ("note=a, b", "x=a;b", "y=$(id)")


def test_bom_crlf_blank_lines_comments_and_optional_columns():
    text = ("\ufeff# comment before the header\r\nrun_id,config,seed,overrides,notes,gpus,timeout_secs\r\n\r\n"
            "a,c.json,1,,,2,30\r\n# a comment row\r\n,,,,,,\r\nb,c.json,2,,,,\r\n")
    rows = parse_sweep_csv(text)
    assert [(r.run_id, r.line, r.gpus, r.timeout_secs) for r in rows] == [("a", 4, 2, 30), ("b", 7, None, None)]


def test_bom_in_a_file(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes(b"\xef\xbb\xbf" + (HEADER + "a,c.json,1,,\n").encode())
    assert [r.run_id for r in read_sweep_csv(p)] == ["a"]


def test_every_bad_row_reported_with_its_line():
    text = (HEADER
            + "ok1,c.json,1,,\n"                 # 2
            + "../x,c.json,1,,\n"                # 3 path traversal
            + "a;b,c.json,1,,\n"                 # 4 shell metachar
            + "ok1,c.json,2,,\n"                 # 5 duplicate
            + "noconf,,1,,\n"                    # 6 missing config
            + "badseed,c.json,one,,\n"           # 7 bad seed
            + "quote,c.json,1,\"'unbalanced\",\n"  # 8 shlex error
            + "g0,c.json,1,,,\n"                 # 9 ok (trailing empty field)
            + "\n"                               # 10 blank
            + "multi,c.json,1,,\"two\nlines\"\n"  # 11-12 ok
            + "seedf,c.json,1.5,,\n"            # 13 bad seed
            + "OK1,c.json,1,,\n")               # 14 differs only by case
    found = problems(text)
    assert [line for line, _ in found] == [3, 4, 5, 6, 7, 8, 13, 14]
    msgs = dict(found)
    assert "invalid run_id '../x'" in msgs[3]
    assert "invalid run_id 'a;b'" in msgs[4]
    assert "duplicate run_id 'ok1' (first at line 2)" in msgs[5]
    assert "config is empty" in msgs[6]
    assert "seed must be an integer" in msgs[7]
    assert "cannot split overrides" in msgs[8]
    assert "'OK1' differs only by case from 'ok1' (first at line 2)" in msgs[14]


def test_bad_gpus_and_timeout():
    text = ("run_id,config,seed,overrides,notes,gpus,timeout_secs\n"
            "a,c,1,,,0,\nb,c,1,,,x,\nc,c,1,,,,-5\nd,c,1,,,1,1.5\ne,c,1,,,1,10\n")
    found = problems(text)
    assert [line for line, _ in found] == [2, 3, 4, 5]
    assert all(("gpus must be a positive integer" in m) or ("timeout_secs must be" in m) for _, m in found)


def test_header_problems():
    found = problems("run_id,config,sede,overrides,nots\na,c,1,,\n")
    assert all(line == 1 for line, _ in found)
    text = " ".join(m for _, m in found)
    assert "unknown column 'sede' (did you mean 'seed'?)" in text
    assert "missing columns 'seed', 'notes'" in text
    assert lines_of("\n\nrun_id,config,seed,overrides,notes,run_id\n") == [3]


def test_empty_file_and_header_only():
    assert "empty" in problems("")[0][1]
    assert "empty" in problems("\n\n  \n")[0][1]
    assert "no runs" in problems(HEADER)[0][1]


def test_too_many_fields_is_an_unquoted_comma():
    found = problems(HEADER + "a,c.json,1,,one, two\n")
    assert found[0][0] == 2 and "unquoted comma" in found[0][1]


def test_csv_syntax_errors_are_reported_and_parsing_goes_on():
    found = problems(HEADER + 'a,"c"x,1,,\nb,c,1,,\n../y,c,1,,\nc,c,1,,"never closed\n')
    assert [line for line, _ in found] == [2, 4, 5]
    assert "unterminated" in found[-1][1]


def test_run_id_validation():
    for good in ("a", "A-1.b_c", "9" * 128):
        assert validate_run_id(good) == good
    for bad in ("../x", "a;b", "-x", ".hidden", "a b", "a/b", "", "9" * 129, "x$(id)"):
        with pytest.raises(InputError):
            validate_run_id(bad)


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError) as info:
        read_sweep_csv(tmp_path / "nope.csv")
    assert "not found" in str(info.value) and "sweep-csv-template" in str(info.value)


def test_template_parses_and_refuses_overwrite(tmp_path):
    p = write_template(tmp_path / "sub" / "sweep.csv")
    assert p.read_text() == TEMPLATE
    rows = read_sweep_csv(p)
    assert len(rows) == 3 and not p.read_text().startswith("#")
    assert rows[2].overrides == ("note=wide, deep", "hidden=64")
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_template(p)
    assert p.read_text() == TEMPLATE


def test_sample_sweep_matches_the_examples():
    repo = Path(__file__).resolve().parents[1]
    rows = read_sweep_csv(repo / "sweeps" / "sweep.csv")
    assert 3 <= len(rows) <= 4
    assert any(any(" " in o for o in r.overrides) for r in rows)  # a quoted override value
    for r in rows:
        assert (repo / "examples" / r.config).is_file()


# --- the CLI, as a user runs it ------------------------------------------------------


def wf(*args, cwd):
    return subprocess.run(WF + list(args), cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_validate_reports_lines_exit_2_no_traceback(project):
    (project / "sweeps").mkdir()
    (project / "sweeps" / "sweep.csv").write_text(HEADER + "ok,c.json,1,,\n../x,c.json,1,,\nok,c.json,x,,\n")
    r = wf("sweep-validate", cwd=project)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "sweep.csv:3: invalid run_id '../x'" in r.stderr
    assert "sweep.csv:4: duplicate run_id 'ok'" in r.stderr
    assert "sweep.csv:4: run ok: seed must be an integer" in r.stderr


def test_cli_template_then_validate_then_refuse(project):
    r = wf("sweep-csv-template", cwd=project)
    assert r.returncode == 0, r.stderr
    assert (project / "sweeps" / "sweep.csv").read_text() == TEMPLATE
    r = wf("sweep-validate", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "3 runs OK" in r.stdout
    r = wf("sweep-validate", "--json", cwd=project)
    doc = json.loads(r.stdout)
    assert doc["runs"] == 3 and doc["rows"][0]["run_id"] == "tiny-s0"
    r = wf("sweep-csv-template", cwd=project)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr and "Traceback" not in r.stderr
    r = wf("sweep-validate", "--csv", "other.csv", cwd=project)
    assert r.returncode == 2 and "not found" in r.stderr


def test_cli_validate_uses_sweep_csv_from_config(project):
    (project / "configs" / "workflow.yaml").write_text("sweep:\n  csv: my/runs.csv\n")
    (project / "my").mkdir()
    (project / "my" / "runs.csv").write_text("run_id,config,seed,overrides,notes,gpus\na,c.json,1,,,2\nb,c.json,2,,,\n")
    r = wf("sweep-validate", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "runs.csv: 2 runs OK" in r.stdout and "1 x 2" in r.stdout
