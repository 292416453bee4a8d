"""pod.host forms: host, user@host, user@host:port, [v6]:port (no sshd needed)."""

from __future__ import annotations

import pytest

from workflow.errors import ConfigError
from workflow.transport.sshconfig import parse_host_spec


@pytest.mark.parametrize("spec,expected", [
    ("gpu-box", (None, "gpu-box", None)),
    ("root@1.2.3.4", ("root", "1.2.3.4", None)),
    ("root@1.2.3.4:37474", ("root", "1.2.3.4", 37474)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("me@[fe80::1]", ("me", "fe80::1", None)),
])
def test_parse_host_spec(spec, expected):
    assert parse_host_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "a b", "root@host:99999", "root@host:x", "@host"])
def test_parse_host_spec_refuses(spec):
    with pytest.raises(ConfigError):
        parse_host_spec(spec)
