"""A kept connection per pod: one background process holds the authenticated SSH
connection and serves later commands over a unix socket, so a command after the first
costs one exec, not one SSH handshake (and never imports the SSH stack).

- ``wire``: the framing both sides speak, and where the files live
  (``.podflow/kept/<pod>.<key>.{sock,lock,log}``; the directory is 0700, the socket 0600,
  and the server checks each caller's ``SO_PEERCRED`` uid).
- ``server``: the background process (``python -m workflow.transport.kept.server``).
  Started by a command that connected directly; ends after ``pod.keepalive_secs`` idle,
  when its link dies, when the pinned host key changes, on ``pod-down`` and on
  ``wf disconnect``. It holds no secret on disk: a password (``REMOTE_SSH_PASSWORD``)
  reaches it through its environment, as it reaches any command.
- ``client``: ``KeptTransport`` and the calls around it (find a live one within a
  bounded health check, start one, stop them).
- ``rsh``: rsync's remote shell through it (or the plain ``ssh`` when it is gone).

Sockets are keyed by pod name and by every connection parameter (``SshParams.key``):
a pool has one per pod, and a changed endpoint, key or pin file is another connection.
"""
