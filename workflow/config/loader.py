"""Load the effective config (SPEC §2): defaults < YAML < env file < process env < flags.

Each source is applied over the previous one key by key; every value keeps its
``Origin`` so ``Config.sources`` can say where it came from and a problem can name the
file and line (or the variable, or the flag). Unknown keys get a did-you-mean at their
own line; secret-looking keys are refused wherever they appear in a file. All problems
of one load are raised together as ``ConfigProblems`` (a ``ConfigError``, exit 2).

Signature kept for every caller: ``load_config(path=None, *, env=None, flags=None,
cwd=None) -> Config``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from workflow.config import schema as S
from workflow.config.aliases import ALIASES, PREFIX, env_name
from workflow.config.coerce import coerce
from workflow.config.defaults import defaults
from workflow.config.model import SECRET_ENV_NAMES, Config
from workflow.config.problems import ConfigProblems, Origin, Problem

DEFAULT_CONFIG = Path("configs") / "workflow.yaml"
ENV_FILE_NAME = "workflow.env"

KeyPath = Tuple[Any, ...]
OriginOf = Callable[[KeyPath], Origin]

_SECRET_WORDS = {"password", "passwd", "passphrase", "token", "secret", "apikey", "api_key"}


def looks_secret(name: str) -> bool:
    """True for names like ``password``, ``HF_TOKEN``, ``vast_api_key`` (not ``tokenizers``)."""
    low = str(name).lower().replace("-", "_")
    parts = [p for p in low.split("_") if p]
    if any(p in _SECRET_WORDS for p in parts):
        return True
    return any(a == "api" and b == "key" for a, b in zip(parts, parts[1:])) or low.endswith("apikey")


def secret_names() -> Dict[str, Optional[str]]:
    """Every secret env var -> the schema key it stands for (None when the schema has none)."""
    names: Dict[str, Optional[str]] = {name: None for name in SECRET_ENV_NAMES}
    names.update(S.secret_env_names())
    return names


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def _suggest(key: str, node: S.Schema, path: KeyPath) -> Optional[str]:
    """The dotted key a misspelt ``key`` (inside section ``path``) most likely meant."""
    prefix = _dotted(path) + "." if path else ""
    close = difflib.get_close_matches(key, list(node.get("properties", {})), n=1, cutoff=0.6)
    if close:
        return prefix + close[0]
    everywhere = S.all_keys()
    same_name = [k for k in everywhere if k.rsplit(".", 1)[-1] == key]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(prefix + key, everywhere, n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_message(key: str, node: S.Schema, path: KeyPath, spell: Callable[[str], str] = lambda k: f"'{k}'") -> str:
    guess = _suggest(key, node, path)
    if guess:
        return f"unknown key; did you mean {spell(guess)}?"
    names = ", ".join(node.get("properties", {}))
    where = f"in '{_dotted(path)}'" if path else "at the top level"
    return f"unknown key; expected one of ({where}): {names}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def display_path(path: Path, root: Path) -> str:
    """A path as shown to the user: relative to the project root when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


class _Builder:
    """Applies sources in order over the defaults, recording origins and problems."""

    def __init__(self, root: Path):
        self.root = root
        self.data: Dict[str, Any] = defaults()
        self.origins: Dict[str, Origin] = {}
        self.problems: List[Problem] = []
        self.file_lines: Dict[KeyPath, int] = {}
        default = Origin("default")
        for dotted, node in S.leaves():
            if not S.is_secret(node):
                self.origins[dotted] = default

    # -- helpers -----------------------------------------------------------------

    def problem(self, origin: Origin, key: Optional[str], message: str) -> None:
        self.problems.append(Problem(origin, key, message))

    def _set(self, path: KeyPath, value: Any, origin: Origin) -> None:
        node = self.data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[path[-1]] = value
        self.origins[_dotted(path)] = origin

    def _refuse_secret(self, origin: Origin, key: str, node: Optional[S.Schema]) -> None:
        envs = (node or {}).get("x-env") or []
        if envs:
            tip = f"set {' or '.join(envs)} in the process environment instead"
        else:
            tip = "secrets are read from the process environment only"
        self.problem(origin, key, f"looks like a secret, and secrets never live in config; {tip}")

    # -- trees (YAML, mapping-valued env/flags) ---------------------------------------

    def apply_tree(self, value: Mapping, node: S.Schema, path: KeyPath, origin_of: OriginOf) -> None:
        """Merge mapping ``value`` into section ``node`` at ``path``, key by key."""
        for raw_key, sub in value.items():
            key = str(raw_key)
            p = path + (key,)
            origin = origin_of(p)
            dotted = _dotted(p)
            child = S.child(node, key)
            if child is None and looks_secret(key):
                secret_keys = [k for k, v in node.get("properties", {}).items() if S.is_secret(v)]
                close = difflib.get_close_matches(key, secret_keys, n=1, cutoff=0.5)
                child = node["properties"][close[0]] if close else None
            if looks_secret(key) or (child is not None and S.is_secret(child)):
                self._refuse_secret(origin, dotted, child)
                continue
            if child is None:
                self.problem(origin, dotted, _unknown_message(key, node, path))
                continue
            self.apply_value(sub, child, p, origin_of)

    def apply_value(self, value: Any, node: S.Schema, path: KeyPath, origin_of: OriginOf) -> None:
        origin = origin_of(path)
        dotted = _dotted(path)
        if S.is_section(node):
            if value is None:  # `pod:` with every line below commented out
                return
            if not isinstance(value, Mapping):
                names = ", ".join(node["properties"])
                self.problem(origin, dotted, f"expected a mapping of keys ({names}), got {_show(value)}")
                return
            self.apply_tree(value, node, path, origin_of)
        elif S.is_free_mapping(node) and isinstance(value, Mapping):
            for raw_key, sub in value.items():
                key = str(raw_key)
                if looks_secret(key):
                    self._refuse_secret(origin_of(path + (key,)), f"{dotted}.{key}", None)
                    continue
                if isinstance(sub, (int, float)) and not isinstance(sub, bool):
                    sub = str(sub)  # OMP_NUM_THREADS: 4
                current = self.data_at(path)
                if not isinstance(current, dict):
                    self._set(path, {}, origin)
                self.data_at(path)[key] = sub
                self.origins[f"{dotted}.{key}"] = origin_of(path + (key,))
            self.origins[dotted] = origin
        else:
            if "array" in S.types_of(node) and isinstance(value, list):
                value = self._check_items(value, node.get("items", {}), path, origin_of)
            self._set(path, value, origin)

    def _check_items(self, items: List[Any], node: S.Schema, path: KeyPath, origin_of: OriginOf) -> List[Any]:
        """Unknown keys inside list items (``data.checks[0].min_file``), with did-you-mean."""
        if not S.is_section(node):
            return items
        out = []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                kept = {}
                for raw_key, sub in item.items():
                    key = str(raw_key)
                    if key in node["properties"]:
                        kept[key] = sub
                        continue
                    p = path + (i, key)
                    guess = difflib.get_close_matches(key, list(node["properties"]), n=1, cutoff=0.6)
                    names = ", ".join(node["properties"])
                    msg = f"unknown key; did you mean '{guess[0]}'?" if guess else f"unknown key; expected one of: {names}"
                    self.problem(origin_of(p), S.path_text(p), msg)
                item = kept
            out.append(item)
        return out

    def data_at(self, path: KeyPath) -> Any:
        node: Any = self.data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    # -- sources -----------------------------------------------------------------

    def add_yaml(self, path: Path, shown: str) -> bool:
        from workflow.config.yamlfile import YamlSyntaxError, read_yaml

        whole = Origin("file", shown, None)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(whole, None, f"cannot read the config file: {exc}")
            return False
        try:
            doc = read_yaml(text)
        except YamlSyntaxError as exc:
            self.problem(whole.at_line(exc.line), None, exc.message)
            return False
        if doc.data is None:
            return True
        if not isinstance(doc.data, Mapping):
            sections = ", ".join(S.schema()["properties"])
            self.problem(whole.at_line(1), None, f"the top level must be a mapping of keys ({sections}), got {_show(doc.data)}")
            return False
        self.file_lines = doc.lines
        for dup_path, line in doc.duplicates:
            self.problem(whole.at_line(line), S.path_text(dup_path), "key given twice in the same mapping")

        def origin_of(p: KeyPath) -> Origin:
            return whole.at_line(self._line_of(p))

        self.apply_tree(doc.data, S.schema(), (), origin_of)
        return True

    def _line_of(self, p: KeyPath) -> Optional[int]:
        while p:
            if p in self.file_lines:
                return self.file_lines[p]
            p = p[:-1]
        return None

    def add_env(self, items: List[Tuple[str, str, Origin]], *, from_file: bool) -> None:
        """Apply ``WF__`` and alias variables of one source (env file or process env).
        Within the source a ``WF__`` variable beats an alias for the same key."""
        chosen: Dict[KeyPath, Tuple[int, str, S.Schema, Origin]] = {}
        secrets = secret_names()
        for name, value, origin in items:
            if name in secrets:
                if from_file:
                    self.problem(origin, None, f"{name} is a secret: it is read from the process environment "
                                               "only, never from a file; remove this line and export it")
                continue
            if name.startswith(PREFIX):
                resolved = self._resolve_wf(name, origin)
                if resolved is None:
                    continue
                path, node = resolved
                rank = 1
            elif name in ALIASES:
                path = tuple(ALIASES[name].split("."))
                node = S.at(ALIASES[name])
                rank = 0
            elif from_file:
                if name in ("WF_CONFIG", "WF_ENV_FILE"):
                    self.problem(origin, None, f"{name} is read from the process environment only")
                    continue
                guess = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.75)
                tip = f"; did you mean {guess[0]}?" if guess else ""
                self.problem(origin, None, f"{name} is not a podflow setting (use WF__SECTION__KEY=value "
                                           f"or one of the seed names such as SWEEP_CSV){tip}")
                continue
            else:
                continue  # PATH, HOME...: not ours
            previous = chosen.get(path)
            if previous is None or rank >= previous[0]:
                chosen[path] = (rank, value, node, origin)
        for path, (_, value, node, origin) in chosen.items():
            dotted = S.path_text(path)
            try:
                typed = coerce(value, node)
            except ValueError as exc:
                self.problem(origin, dotted, str(exc))
                continue
            self.apply_value(typed, node, path, lambda p, o=origin: o)

    def _resolve_wf(self, name: str, origin: Origin) -> Optional[Tuple[KeyPath, S.Schema]]:
        """``WF__SWEEP__ON_FAILURE`` -> (('sweep', 'on_failure'), schema); names inside a
        free mapping keep their case (``WF__REMOTE__ENV__HF_HOME`` -> remote.env.HF_HOME)."""
        parts = name[len(PREFIX):].split("__")
        if not all(parts):
            self.problem(origin, None, f"{name}: empty part in the name (write WF__SECTION__KEY, "
                                       "double underscores only between names)")
            return None
        node: S.Schema = S.schema()
        path: KeyPath = ()
        for i, part in enumerate(parts):
            if S.is_free_mapping(node):
                key = "__".join(parts[i:])
                if looks_secret(key):
                    self._refuse_secret(origin, f"{_dotted(path)}.{key}", None)
                    return None
                sub = S.child(node, key)
                return path + (key,), sub or {}
            key = part.lower()
            sub = S.child(node, key)
            if sub is None or S.is_secret(sub):
                if sub is not None:
                    self._refuse_secret(origin, _dotted(path + (key,)), sub)
                else:
                    msg = _unknown_message(key, node, path, spell=lambda k: f"{env_name(k)} ({k})")
                    self.problem(origin, _dotted(path + (key,)), msg)
                return None
            node, path = sub, path + (key,)
        return path, node

    def add_flags(self, flags: Mapping[str, Any]) -> None:
        for dotted, value in flags.items():
            origin = Origin("flag", var="--" + dotted.rsplit(".", 1)[-1].replace("_", "-"))
            node = S.at(dotted)
            if node is None or S.is_secret(node):
                self.problem(origin, dotted, "not a config key")
                continue
            if isinstance(value, str) and "string" not in S.types_of(node):
                try:
                    value = coerce(value, node)
                except ValueError as exc:
                    self.problem(origin, dotted, str(exc))
                    continue
            self.apply_value(value, node, tuple(dotted.split(".")), lambda p, o=origin: o)

    # -- validation --------------------------------------------------------------

    def validate(self) -> None:
        from workflow.config import validmemo

        key = validmemo.digest(S.SCHEMA_PATH, self.data)
        if not self.problems and validmemo.known(key):
            return
        for error in S.validator().iter_errors(self.data):
            path = tuple(error.absolute_path)
            origin = self._origin_of(path)
            self.problem(origin, S.path_text(path) or None, _schema_message(error))
        if not self.problems:
            validmemo.remember(key)

    def _origin_of(self, path: KeyPath) -> Origin:
        keys: List[str] = []
        for part in path:
            if isinstance(part, int):
                break
            keys.append(str(part))
        origin = Origin("default")
        while keys:
            found = self.origins.get(".".join(keys))
            if found is not None:
                origin = found
                break
            keys.pop()
        if origin.kind == "file":
            origin = origin.at_line(self._line_of(path) or origin.line)
        return origin


def _schema_message(error: Any) -> str:
    """Words for one jsonschema error: what was expected, what was found."""
    kind, value, node = error.validator, error.instance, error.schema
    if kind in ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"expected {S.describe_type(node)}, got {_show(value)}"
    if kind == "pattern":
        return f"expected a string matching {error.validator_value}, got {_show(value)}"
    if kind == "minLength":
        return f"expected a non-empty string, got {_show(value)}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in (value or {})]
        return "missing required key " + ", ".join(f"'{k}'" for k in missing)
    if kind == "propertyNames":
        return f"{_show(value)} is not a valid name here"
    return error.message


def fill_remote_paths(data: Dict[str, Any], root: Path) -> None:
    """Provider-dependent defaults for ``remote.*`` (local: under .podflow/local-pod/)."""
    remote = data["remote"]
    if data["pod"]["provider"] == "local":
        base = root / ".podflow" / "local-pod"
        names = {"workdir": "repo", "outputs_dir": "outputs", "data_dir": "data"}
        for key, name in names.items():
            if not remote.get(key):
                remote[key] = str(base / name)
            else:
                p = Path(os.path.expanduser(remote[key]))
                remote[key] = str(p if p.is_absolute() else root / p)
    else:
        base = f"~/podflow/{data['project']}"
        for key, name in {"workdir": "repo", "outputs_dir": "outputs", "data_dir": "data"}.items():
            remote.setdefault(key, None)
            if not remote[key]:
                remote[key] = f"{base}/{name}"


def config_path(path: Optional[os.PathLike], env: Mapping[str, str], root: Path) -> Tuple[Path, Optional[str]]:
    """The YAML to read and, when it was chosen explicitly, by what (``WF_CONFIG``...)."""
    if path:
        chosen, by = Path(path), "the path given"
    elif env.get("WF_CONFIG"):
        chosen, by = Path(env["WF_CONFIG"]), "WF_CONFIG"
    else:
        chosen, by = DEFAULT_CONFIG, None
    chosen = Path(os.path.expanduser(str(chosen)))
    return (chosen if chosen.is_absolute() else root / chosen), by


def load_config(
    path: Optional[os.PathLike] = None,
    *,
    env: Optional[Mapping[str, str]] = None,
    flags: Optional[Mapping[str, Any]] = None,
    cwd: Optional[os.PathLike] = None,
) -> Config:
    """The effective config for this invocation; raises ``ConfigProblems`` (exit 2)."""
    from workflow.config.envfile import parse_env_file

    env = os.environ if env is None else env
    root = Path(cwd) if cwd else Path.cwd()
    b = _Builder(root)

    cfg_path, chosen_by = config_path(path, env, root)
    used: Optional[Path] = None
    if cfg_path.is_file():
        if b.add_yaml(cfg_path, display_path(cfg_path, root)):
            used = cfg_path
    elif chosen_by:
        b.problem(Origin("file", display_path(cfg_path, root)), None, f"config file not found (set by {chosen_by})")

    if env.get("WF_ENV_FILE"):
        env_path = Path(os.path.expanduser(env["WF_ENV_FILE"]))
        env_path = env_path if env_path.is_absolute() else root / env_path
        if not env_path.is_file():
            b.problem(Origin("env-file", display_path(env_path, root)), None, "env file not found (set by WF_ENV_FILE)")
            env_path = None
    else:
        env_path = cfg_path.with_name(ENV_FILE_NAME)
        env_path = env_path if env_path.is_file() else None
    if env_path is not None:
        shown = display_path(env_path, root)
        try:
            entries, bad = parse_env_file(env_path)
        except (OSError, UnicodeDecodeError) as exc:
            entries, bad = [], []
            b.problem(Origin("env-file", shown), None, f"cannot read the env file: {exc}")
        for err in bad:
            b.problem(Origin("env-file", shown, err.line), None, err.message)
        b.add_env([(e.name, e.value, Origin("env-file", shown, e.line, e.name)) for e in entries], from_file=True)

    b.add_env([(k, v, Origin("env", var=k)) for k, v in env.items()], from_file=False)
    b.add_flags(flags or {})

    b.validate()
    if b.problems:
        raise ConfigProblems(b.problems)
    fill_remote_paths(b.data, root)
    sources = {k: o.source for k, o in b.origins.items()}
    return Config(data=b.data, sources=sources, path=used, root=root)
