"""What `/metrics` shows, in one place.

Each gateway owns its registry (not prometheus-client's global one), so several gateways in one
process — the tests start many — never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Reasons by enhanced status code, so a dashboard reads "relay_denied", not "5.7.1".
_REASONS = {
    "5.7.1": "denied", "5.1.3": "bad_recipient", "4.5.3": "too_many_recipients",
    "5.3.4": "too_large", "5.6.0": "nothing_to_send", "4.3.0": "temporary_failure",
    "4.3.2": "shutting_down", "5.7.0": "auth_required", "5.7.8": "bad_credentials",
    "4.7.0": "too_many_connections", "4.7.1": "rate_limited",
}


def refusal_reason(reply: str) -> str | None:
    """The metric label for a 4xx/5xx reply to MAIL, RCPT or DATA; None for others."""
    parts = reply.split(" ", 2)
    if len(parts) < 2 or reply[:1] not in "45":
        return None
    return _REASONS.get(parts[1], "protocol_error" if reply[:1] == "5" else "temporary_other")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter("smtp2pulse_smtp_sessions", "SMTP connections accepted",
                                registry=r)
        self.sessions_open = Gauge("smtp2pulse_smtp_sessions_open", "SMTP connections open now",
                                   registry=r)
        self.accepted = Counter("smtp2pulse_messages_accepted",
                                "Messages stored and answered 250", registry=r)
        self.refused = Counter("smtp2pulse_smtp_refusals",
                               "4xx/5xx replies to MAIL, RCPT, DATA and connections, by reason",
                               ["reason"], registry=r)
        self.deliveries = Counter("smtp2pulse_deliveries",
                                  "Delivery attempts by outcome (sent, refused, deferred, failed)",
                                  ["outcome"], registry=r)
        self.platform_latency = Histogram(
            "smtp2pulse_platform_request_seconds", "Time for one send-message request",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.spool_depth = Gauge("smtp2pulse_spool_deliveries", "Deliveries in the spool by state",
                                 ["state"], registry=r)
        self.oldest_queued = Gauge("smtp2pulse_spool_oldest_pending_seconds",
                                   "Age of the oldest delivery not yet finished", registry=r)
        self.callbacks = Counter("smtp2pulse_callbacks",
                                 "Delivery-status callbacks by result (recorded, repeated, "
                                 "unknown, forged)", ["result"], registry=r)
        self.bounces = Counter("smtp2pulse_bounces", "Delivery status notifications by result",
                               ["result"], registry=r)

    def refusal(self, reply: str) -> None:
        reason = refusal_reason(reply)
        if reason is not None:
            self.refused.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
