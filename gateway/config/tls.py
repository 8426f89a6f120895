"""The server side of TLS: one context per loaded config, built (and so checked) at load time.

A missing or unreadable certificate must stop the daemon at start with a config error, never
leave it running as a silent plaintext server; building the context while the config is read
is what makes `check-config` and `serve` both say so. SIGHUP builds a new context, so rotated
certificates reach new sessions without a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert: Path, key: Path, min_version: str = "1.2") -> ssl.SSLContext:
    """A server context for SMTP: no client certificates asked for, TLS 1.2 at least.

    Raises ValueError with a sentence naming the file that is wrong.
    """
    for label, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ValueError(
                f"cannot read the {label} {str(path)!r}: {exc.strerror or exc}"
            ) from None
    context = unloaded_context(min_version)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ValueError(
            f"certificate {str(cert)!r} and key {str(key)!r} do not load "
            f"({exc.reason or exc}); both must be PEM and belong together"
        ) from None
    return context


def unloaded_context(min_version: str = "1.2") -> ssl.SSLContext:
    """The context's settings without its certificate: all a config loaded without its secrets
    (for `queue`) needs, since it never serves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    context.verify_mode = ssl.CERT_NONE  # mail clients do not present certificates
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
