"""smtp2pulse: an SMTP-to-API gateway daemon.

Layers: config < spool < message < delivery < shown < status < smtp < app < cli

A message travels config → smtp → message → spool → delivery → status. A package imports only
the packages to its left in the line above: the spool is the hub that the front (smtp, message)
writes and the back (delivery, status) reads, shown is how a delivery reads to a person (for the
status page and the queue command), smtp drives the accept path, app builds the daemon and cli
the commands. queue_cli, the command over the spool, imports config, spool and shown only;
preview_cli, the command that makes a message's requests without sending them, imports what the
accept path would use (config, spool, message, delivery, smtp's replies) and queue_cli.
errors, component, logs, loops, privacy, sdnotify, times and status.metrics (a leaf) are for
everyone. tests/test_imports.py checks it.
"""
