"""Config loading (SPEC §2): precedence and sources, aliases, WF__ overrides, env file,
coercion, schema coverage. In-process through ``load_config``; the CLI side of errors is
in test_config_errors.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from workflow.config import SECRET_ENV_NAMES, load_config
from workflow.config import schema as S
from workflow.config.aliases import ALIASES
from workflow.config.defaults import DEFAULTS
from workflow.config.loader import looks_secret, secret_names
from workflow.config.problems import ConfigProblems
from workflow.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[1]


def write(root: Path, yaml_text: str = None, env_text: str = None) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    if yaml_text is not None:
        (root / "configs" / "workflow.yaml").write_text(textwrap.dedent(yaml_text))
    if env_text is not None:
        (root / "configs" / "workflow.env").write_text(textwrap.dedent(env_text))
    return root


def load(root: Path, env=None, flags=None):
    return load_config(env=env or {}, flags=flags, cwd=root)


# -- precedence and sources ---------------------------------------------------------

YAML_CSV = "project: p\nsweep:\n  csv: from-yaml.csv\n"


@pytest.mark.parametrize("level", ["default", "yaml", "env-file", "env", "flag"])
def test_precedence_each_level_beats_the_ones_below(tmp_path, level):
    order = ["default", "yaml", "env-file", "env", "flag"]
    upto = order[: order.index(level) + 1]
    write(tmp_path, YAML_CSV if "yaml" in upto else None, "SWEEP_CSV=from-envfile.csv\n" if "env-file" in upto else None)
    env = {"WF__SWEEP__CSV": "from-env.csv"} if "env" in upto else {}
    flags = {"sweep.csv": "from-flag.csv"} if "flag" in upto else None
    cfg = load(tmp_path, env, flags)
    expected = {
        "default": ("sweeps/sweep.csv", "default"),
        "yaml": ("from-yaml.csv", "file:configs/workflow.yaml:3"),
        "env-file": ("from-envfile.csv", "env-file:configs/workflow.env:1"),
        "env": ("from-env.csv", "env:WF__SWEEP__CSV"),
        "flag": ("from-flag.csv", "flag"),
    }[level]
    assert (cfg.sweep.csv, cfg.sources["sweep.csv"]) == expected


def test_sources_cover_every_key_and_name_file_lines(tmp_path):
    write(tmp_path, """\
        project: demo
        pod:
          provider: ssh
          host: gpu-box
          offer:
            gpu: A100
        """)
    cfg = load(tmp_path)
    assert cfg.sources["project"] == "file:configs/workflow.yaml:1"
    assert cfg.sources["pod.host"] == "file:configs/workflow.yaml:4"
    assert cfg.sources["pod.offer.gpu"] == "file:configs/workflow.yaml:6"
    assert cfg.sources["pod.port"] == "default"
    for dotted, node in S.leaves():
        if not S.is_secret(node):
            assert dotted in cfg.sources, dotted
    assert cfg.path == tmp_path / "configs" / "workflow.yaml"
    assert cfg.root == tmp_path


def test_no_config_file_gives_defaults(tmp_path):
    cfg = load(tmp_path)
    assert cfg.path is None
    assert cfg.project == DEFAULTS["project"]
    assert cfg.pod.provider == "local"
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.fsm.enforce is True
    assert cfg.sweep.args == ["{config}", "--seed={seed}", "--out_dir={out_dir}"]


def test_empty_sections_and_empty_file_are_fine(tmp_path):
    write(tmp_path, "pod:\nsweep:\n  # nothing yet\n")
    assert load(tmp_path).pod.provider == "local"
    write(tmp_path, "")
    assert load(tmp_path).project == "podflow"


def test_wf_config_and_wf_env_file_select_other_files(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "my.yaml").write_text("project: other\n")
    (other / "workflow.env").write_text("SWEEP_CSV=beside.csv\n")
    (tmp_path / "custom.env").write_text("WF__PROGRESS=quiet\n")
    cfg = load(tmp_path, {"WF_CONFIG": str(other / "my.yaml")})
    assert cfg.project == "other" and cfg.sweep.csv == "beside.csv"
    assert cfg.sources["sweep.csv"].startswith("env-file:") and cfg.sources["sweep.csv"].endswith("workflow.env:1")
    cfg = load(tmp_path, {"WF_CONFIG": str(other / "my.yaml"), "WF_ENV_FILE": "custom.env"})
    assert cfg.progress == "quiet" and cfg.sweep.csv == "sweeps/sweep.csv"
    assert cfg.sources["progress"] == "env-file:custom.env:1"


def test_flags_are_typed_and_checked(tmp_path):
    cfg = load(tmp_path, flags={"progress": "quiet", "tasks.timeout_secs": "30", "fsm.enforce": False})
    assert (cfg.progress, cfg.tasks.timeout_secs, cfg.fsm.enforce) == ("quiet", 30, False)
    with pytest.raises(ConfigError, match="flag --progress: progress: expected one of"):
        load(tmp_path, flags={"progress": "loud"})
    with pytest.raises(ConfigError, match="sweep.nope: not a config key"):
        load(tmp_path, flags={"sweep.nope": 1})


# -- WF__ and aliases ----------------------------------------------------------------

#: SPEC §2, copied by hand so the test checks the code against the contract.
SPEC_ALIASES = {
    "LIUM_TARGET": ("pod.target", "my-pod", "my-pod"),
    "OPS_DEFAULT_HOST": ("pod.host", "gpu-box", "gpu-box"),
    "REPO_URL": ("checkout.repo_url", "git@github.com:me/x.git", "git@github.com:me/x.git"),
    "CHECKOUT_BRANCH": ("checkout.branch", "dev", "dev"),
    "CHECKOUT_PR": ("checkout.pr", "42", 42),
    "OPS_REMOTE_REPO": ("remote.workdir", "/srv/repo", "/srv/repo"),
    "OPS_REMOTE_OUTPUTS_DIR": ("remote.outputs_dir", "/srv/out", "/srv/out"),
    "DATA_DIR": ("remote.data_dir", "/srv/data", "/srv/data"),
    "REMOTE_PYTHON_BIN": ("remote.python", "/opt/conda/bin/python", "/opt/conda/bin/python"),
    "VENV_RECREATE": ("checkout.venv_recreate", "1", True),
    "WF_FSM_ENFORCE": ("fsm.enforce", "0", False),
    "WF_STATE_FILE": ("fsm.state_file", "/srv/state.json", "/srv/state.json"),
    "WF_TMUX_SESSION": ("tasks.tmux_session", "wf-tasks", "wf-tasks"),
    "SWEEP_TMUX_SESSION": ("sweep.tmux_session", "wf-sweep", "wf-sweep"),
    "SWEEP_CSV": ("sweep.csv", "sweeps/b.csv", "sweeps/b.csv"),
    "RUN_TIMEOUT_SECS": ("sweep.run_timeout_secs", "3600", 3600),
    "TASK_TIMEOUT_SECS": ("tasks.timeout_secs", "90", 90),
    "RUN_OUT_MODE": ("sweep.out_mode", "local_sync", "local_sync"),
    "RUN_OUT_LOCAL_ROOT": ("sweep.local_root", "/tmp/runs", "/tmp/runs"),
    "SYNC_INTERVAL_SECS": ("sweep.sync_interval_secs", "30", 30),
    "AUTO_INSTALL_PREREQS": ("bootstrap.install_prereqs", "yes", True),
    "BOOTSTRAP_SCRIPT": ("bootstrap.script", "/mnt/bootstrap-pod.sh", "/mnt/bootstrap-pod.sh"),
    "WANDB_SETUP_SCRIPT": ("bootstrap.wandb_setup_script", "/mnt/set-wandb.sh", "/mnt/set-wandb.sh"),
    "SWEEP_WANDB": ("sweep.wandb.enabled", "true", True),
    "LOCAL_ARTIFACTS_DIR": ("local.artifacts_dir", "arts", "arts"),
}


def test_alias_table_matches_spec():
    assert {name: key for name, (key, _, _) in SPEC_ALIASES.items()} == ALIASES


@pytest.mark.parametrize("name", sorted(SPEC_ALIASES))
def test_every_alias_sets_its_key_from_env_and_env_file(tmp_path, name):
    key, raw, typed = SPEC_ALIASES[name]
    cfg = load(tmp_path, {name: raw})
    assert cfg.get(key) == typed
    assert cfg.sources[key] == f"env:{name}"
    write(tmp_path, None, f"# seed names work here too\n{name}={raw}\n")
    cfg = load(tmp_path)
    assert cfg.get(key) == typed
    assert cfg.sources[key] == "env-file:configs/workflow.env:2"


def test_wf_override_beats_alias_in_the_same_source(tmp_path):
    env = {"WF__SWEEP__RUN_TIMEOUT_SECS": "40", "RUN_TIMEOUT_SECS": "30"}
    cfg = load(tmp_path, env)
    assert cfg.sweep.run_timeout_secs == 40 and cfg.sources["sweep.run_timeout_secs"] == "env:WF__SWEEP__RUN_TIMEOUT_SECS"
    # In a file, whichever line comes first.
    for text in ("WF__SWEEP__CSV=wf.csv\nSWEEP_CSV=alias.csv\n", "SWEEP_CSV=alias.csv\nWF__SWEEP__CSV=wf.csv\n"):
        write(tmp_path, None, text)
        assert load(tmp_path).sweep.csv == "wf.csv"


def test_process_env_beats_env_file_whatever_the_spelling(tmp_path):
    write(tmp_path, None, "WF__SWEEP__CSV=file.csv\n")
    cfg = load(tmp_path, {"SWEEP_CSV": "env.csv"})
    assert cfg.sweep.csv == "env.csv" and cfg.sources["sweep.csv"] == "env:SWEEP_CSV"


def test_wf_names_nest_and_lower_case(tmp_path):
    env = {
        "WF__POD__OFFER__GPU": "H100",
        "WF__POD__OFFER__REGIONS": '["US", "EU"]',
        "WF__BOOTSTRAP__APT_PACKAGES": "[git, tmux]",
        "WF__POD__OFFER__MAX_PRICE_PER_HOUR": "2.5",
        "wf__project": "ignored-lowercase-prefix",  # not WF__: not ours
        "WF__POD__USER": "",
        "WF__DATA__CHECKS": '[{"path": "train", "min_files": 2}]',
    }
    cfg = load(tmp_path, env)
    assert cfg.pod.offer.gpu == "H100"
    assert cfg.pod.offer.regions == ["US", "EU"]
    assert cfg.bootstrap.apt_packages == ["git", "tmux"]
    assert cfg.pod.offer.max_price_per_hour == 2.5
    assert cfg.pod.user is None
    assert cfg.data.checks == [{"path": "train", "min_files": 2}]
    assert cfg.project == "podflow"


def test_remote_env_mapping_from_yaml_and_env_keeps_names(tmp_path):
    write(tmp_path, "remote:\n  env:\n    OMP_NUM_THREADS: 4\n    TOKENIZERS_PARALLELISM: 'false'\n")
    cfg = load(tmp_path, {"WF__REMOTE__ENV__HF_HOME": "/data/hf"})
    assert dict(cfg.remote.env) == {"OMP_NUM_THREADS": "4", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": "/data/hf"}
    assert cfg.sources["remote.env.HF_HOME"] == "env:WF__REMOTE__ENV__HF_HOME"
    assert cfg.sources["remote.env.OMP_NUM_THREADS"] == "file:configs/workflow.yaml:3"


@pytest.mark.parametrize("raw,expected", [
    ("1", True), ("0", False), ("true", True), ("False", False), ("yes", True), ("NO", False), ("on", True),
])
def test_booleans_from_env(tmp_path, raw, expected):
    assert load(tmp_path, {"WF_FSM_ENFORCE": raw}).fsm.enforce is expected


@pytest.mark.parametrize("raw,expected", [("auto", "auto"), ("true", True), ("0", False)])
def test_require_cuda_is_auto_true_or_false_from_env(tmp_path, raw, expected):
    assert load(tmp_path, {}).checkout.require_cuda == "auto"
    value = load(tmp_path, {"WF__CHECKOUT__REQUIRE_CUDA": raw}).checkout.require_cuda
    assert value == expected and type(value) is type(expected)


def test_null_and_numbers_from_env(tmp_path):
    cfg = load(tmp_path, {"WF__SWEEP__RUN_TIMEOUT_SECS": "null", "WF__POD__CONNECT_TIMEOUT_SECS": "2.5",
                          "WF__POD__TARGET": "7", "WF__POD__TTL": "6h"})
    assert cfg.sweep.run_timeout_secs is None
    assert cfg.pod.connect_timeout_secs == 2.5
    assert cfg.pod.target == "7"  # a name or id: stays a string
    assert cfg.pod.ttl == "6h"


# -- env file ------------------------------------------------------------------------


def test_env_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    write(tmp_path, None, f"""\
        SWEEP_CSV=$(touch {marker})
        BOOTSTRAP_SCRIPT=`touch {marker}`
        REPO_URL="$HOME/repo; touch {marker}"
        CHECKOUT_BRANCH='${{USER}}'
        """)
    cfg = load(tmp_path)
    assert cfg.sweep.csv == f"$(touch {marker})"
    assert cfg.bootstrap.script == f"`touch {marker}`"
    assert cfg.checkout.repo_url == f"$HOME/repo; touch {marker}"
    assert cfg.checkout.branch == "${USER}"
    assert not marker.exists()


def test_env_file_syntax_tolerated(tmp_path):
    write(tmp_path, None, """\
        # a comment

           # an indented comment
        export SWEEP_CSV=exported.csv
        CHECKOUT_BRANCH = spaced   # trailing comment
        REPO_URL="https://example.com/a b.git"
        BOOTSTRAP_SCRIPT='/mnt/with #hash.sh'
        WF__CHECKOUT__INSTALL="pip install \\"x\\""
        WF__SWEEP__ENTRYPOINT=train#2.py
        """)
    cfg = load(tmp_path)
    assert cfg.sweep.csv == "exported.csv"
    assert cfg.checkout.branch == "spaced"
    assert cfg.checkout.repo_url == "https://example.com/a b.git"
    assert cfg.bootstrap.script == "/mnt/with #hash.sh"
    assert cfg.checkout.install == 'pip install "x"'
    assert cfg.sweep.entrypoint == "train#2.py"
    assert cfg.sources["checkout.branch"] == "env-file:configs/workflow.env:5"


def test_all_problems_reported_together_sorted(tmp_path):
    write(tmp_path, "sweep:\n  on_failure: abort\npod:\n  portt: 1\nprogress: loud\n", "oops\n")
    with pytest.raises(ConfigProblems) as info:
        load(tmp_path, {"WF__POD__PORT": "x"})
    where = [str(p).split(": ", 1)[0] for p in info.value.problems]
    assert where == ["configs/workflow.yaml:2", "configs/workflow.yaml:4", "configs/workflow.yaml:5",
                     "configs/workflow.env:1", "environment variable WF__POD__PORT"]
    assert info.value.exit_code == ExitCode.BAD_INPUT


# -- remote paths --------------------------------------------------------------------


def test_local_provider_remote_paths_under_project(tmp_path):
    write(tmp_path, "remote:\n  data_dir: mydata\n")
    cfg = load(tmp_path)
    base = tmp_path / ".podflow" / "local-pod"
    assert cfg.remote.workdir == str(base / "repo")
    assert cfg.remote.outputs_dir == str(base / "outputs")
    assert cfg.remote.data_dir == str(tmp_path / "mydata")


def test_cloud_provider_remote_paths_under_home(tmp_path):
    write(tmp_path, "project: exp1\npod:\n  provider: ssh\n  host: h\n")
    cfg = load(tmp_path)
    assert cfg.remote.workdir == "~/podflow/exp1/repo"
    assert cfg.remote.outputs_dir == "~/podflow/exp1/outputs"


# -- schema and defaults ---------------------------------------------------------------

#: SPEC §2's key table, by hand.
SPEC_KEYS = """
project progress pod.provider pod.host pod.port pod.user pod.identity_file pod.known_hosts
pod.connect_timeout_secs pod.target pod.offer.preset pod.offer.gpu pod.offer.num_gpus
pod.offer.min_gpu_ram_gb pod.offer.min_reliability pod.offer.max_price_per_hour pod.offer.regions
pod.image pod.template_id pod.disk_gb pod.volume pod.ttl pod.ready_timeout_secs pod.max_offer_attempts
remote.workdir remote.outputs_dir remote.data_dir remote.python remote.env
bootstrap.install_prereqs bootstrap.apt_packages bootstrap.script bootstrap.wandb_setup_script
checkout.repo_url checkout.branch checkout.pr checkout.expect_sha checkout.force_clean checkout.venv_recreate
checkout.install checkout.require_torch checkout.require_cuda data.checks data.download
sweep.csv sweep.workdir sweep.entrypoint sweep.launcher sweep.args sweep.gpus_per_run sweep.nproc_per_node
sweep.run_timeout_secs sweep.on_failure sweep.max_retries sweep.out_mode sweep.local_root
sweep.sync_interval_secs sweep.tmux_session sweep.wandb.enabled sweep.wandb.project sweep.wandb.group
fsm.enforce fsm.state_file tasks.tmux_session tasks.timeout_secs local.artifacts_dir
""".split()


def test_schema_has_every_spec_key_and_defaults_match_it():
    leaves = {k for k, node in S.leaves() if not S.is_secret(node)}
    assert set(SPEC_KEYS) <= leaves
    default_leaves = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and S.is_section(S.at(prefix + k)):
                walk(v, prefix + k + ".")
            else:
                default_leaves.add(prefix + k)

    walk(DEFAULTS)
    assert default_leaves == leaves, "defaults.py and schema.json must list the same keys"
    assert list(S.validator().iter_errors(DEFAULTS)) == []


def test_schema_is_closed_and_enums_are_the_spec_ones():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(S.schema())

    def walk(node, where):
        if S.is_section(node):
            assert node.get("additionalProperties") is False, where
            for k, sub in node["properties"].items():
                walk(sub, f"{where}.{k}")
        if "items" in node:
            walk(node["items"], where + "[]")

    walk(S.schema(), "<root>")
    enums = {k: [v for v in S.at(k)["enum"] if v is not None] for k in (
        "pod.provider", "progress", "sweep.launcher", "sweep.on_failure", "sweep.out_mode", "pod.offer.preset")}
    assert enums == {
        "pod.provider": ["local", "ssh", "lium", "vastai", "runpod"],
        "progress": ["realtime", "milestones", "quiet"],
        "sweep.launcher": ["torchrun", "python"],
        "sweep.on_failure": ["continue", "stop"],
        "sweep.out_mode": ["durable", "local_sync"],
        "pod.offer.preset": ["api-only", "inference-24g", "finetune-40g"],
    }


def test_secret_names_are_known_to_the_model():
    marked = S.secret_env_names()
    assert set(marked) == set(SECRET_ENV_NAMES) == set(secret_names())
    assert marked["REMOTE_SSH_PASSWORD"] == "pod.password"


@pytest.mark.parametrize("name,secret", [
    ("password", True), ("HF_TOKEN", True), ("vast_api_key", True), ("apiKey", True), ("db-passwd", True),
    ("TOKENIZERS_PARALLELISM", False), ("known_hosts", False), ("max_tokens", False), ("keyfile", False),
])
def test_looks_secret(name, secret):
    assert looks_secret(name) is secret


def test_starter_is_the_repo_config_and_validates(tmp_path):
    from workflow.config.starter import starter_text

    assert (REPO / "configs" / "workflow.yaml").read_text() == starter_text()
    write(tmp_path, starter_text())
    cfg = load(tmp_path)
    assert cfg.pod.provider == "local"
    assert cfg.sources["pod.provider"].startswith("file:configs/workflow.yaml:")


def test_config_is_read_only(tmp_path):
    cfg = load(tmp_path)
    with pytest.raises(TypeError):
        cfg.data["project"] = "x"
    with pytest.raises(TypeError):
        cfg.sources["project"] = "x"
    with pytest.raises(AttributeError, match="pod.nope"):
        cfg.pod.nope
