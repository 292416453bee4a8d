"""The wire format between the engine and the podagent, shared by both sides.

Payloads are wrapped in markers so that login banners, ``.bashrc`` noise or a stray
print cannot break parsing (SkyPilot's ``encode_payload`` idea).
"""

import json
import struct

BEGIN = "<<<PODFLOW-BEGIN>>>"
END = "<<<PODFLOW-END>>>"

#: Exit code of the launcher snippet when the agent file is not on the pod yet.
EXIT_AGENT_MISSING = 197


def encode(doc):
    """One response document as the text the agent prints."""
    # "<" only occurs inside JSON strings: escaping it keeps marker text that a payload
    # carries (a task's command, a log line) from being taken for the markers.
    body = json.dumps(doc, sort_keys=True).replace("<", "\\u003c")
    return "\n" + BEGIN + "\n" + body + "\n" + END + "\n"


def decode(text):
    """The last document between markers in ``text``; ValueError when there is none."""
    end = text.rfind(END)
    start = text.rfind(BEGIN, 0, end if end >= 0 else None)
    if start < 0 or end < 0:
        raise ValueError("no podagent response markers in output")
    return json.loads(text[start + len(BEGIN) : end])


class AgentError(Exception):
    """An error the agent reports back: ``kind`` picks the engine's error type."""

    def __init__(self, kind, message, **extra):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.extra = extra

    def to_doc(self):
        doc = {"kind": self.kind, "message": self.message}
        doc.update(self.extra)
        return doc


# -- frames: ``podagent serve`` (``serve.py``) and its callers speak these on one channel

_FRAME_HEADER = struct.Struct("!cI")


def frame(kind, payload=b""):
    """One frame: a kind byte, a 4-byte big-endian length, the payload."""
    return _FRAME_HEADER.pack(kind, len(payload)) + payload


class FrameReader(object):
    """Splits bytes from a stream into frames: ``feed`` what arrived, ``next`` a whole
    frame ``(kind, payload)`` or None while one is incomplete."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data

    def next(self):
        if len(self._buf) < _FRAME_HEADER.size:
            return None
        kind, size = _FRAME_HEADER.unpack_from(self._buf)
        end = _FRAME_HEADER.size + size
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[_FRAME_HEADER.size:end])
        del self._buf[:end]
        return kind, payload
