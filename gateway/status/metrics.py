"""What `/metrics` shows, in one place.

Each gateway owns its registry (not prometheus-client's global one), so several gateways in one
process — the tests start many — never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter("smtp2pulse_smtp_sessions", "SMTP connections accepted", registry=r)
        self.sessions_open = Gauge(
            "smtp2pulse_smtp_sessions_open", "SMTP connections open now", registry=r
        )
        self.accepted = Counter(
            "smtp2pulse_messages_accepted", "Messages stored and answered 250", registry=r
        )
        self.refused = Counter(
            "smtp2pulse_smtp_refusals",
            "4xx/5xx replies to MAIL, RCPT, DATA and connections, by reason",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "smtp2pulse_deliveries",
            "Delivery attempts by outcome (sent, refused, deferred, failed, unknown)",
            ["outcome"],
            registry=r,
        )
        self.platform_latency = Histogram(
            "smtp2pulse_platform_request_seconds",
            "Time for one platform request",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_messages = Histogram(
            "smtp2pulse_platform_request_messages",
            "Messages in one platform request (1: send-message; more: send-list-messages)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.spool_depth = Gauge(
            "smtp2pulse_spool_deliveries", "Deliveries in the spool by state", ["state"], registry=r
        )
        self.oldest_queued = Gauge(
            "smtp2pulse_spool_oldest_pending_seconds",
            "Age of the oldest delivery not yet finished",
            registry=r,
        )
        self.callbacks = Counter(
            "smtp2pulse_callbacks",
            "Delivery-status callbacks by result (recorded, repeated, unknown, forged)",
            ["result"],
            registry=r,
        )
        self.filtered = Counter(
            "smtp2pulse_messages_filtered",
            "Bounces and automatic replies not sent, by kind and action",
            ["kind", "action"],
            registry=r,
        )
        # What the platform bills: the parts of each SMS sent, by recipient domain.
        self.sms_parts = Counter(
            "smtp2pulse_sms_parts", "SMS parts sent, by domain", ["domain"], registry=r
        )
        # Messages by the route (config `routes`) they took; deliveries kept but never sent.
        self.routed = Counter(
            "smtp2pulse_routed", "Messages that took a route, by route", ["route"], registry=r
        )
        self.suppressed = Counter(
            "smtp2pulse_suppressed",
            "Deliveries accepted and kept but never sent, by recipient "
            "domain and reason (route, repeat, limit)",
            ["domain", "reason"],
            registry=r,
        )
        # Today's spend beside each limit (config `limits`), read from the spool at scrape
        # time: shared by every gateway of one database, so any of them shows the same.
        self.budget_used = Gauge(
            "smtp2pulse_domain_budget_used",
            "Messages or SMS parts a domain admitted to be sent on its calendar day",
            ["domain", "unit"],
            registry=r,
        )
        self.budget_limit = Gauge(
            "smtp2pulse_domain_budget_limit",
            "A domain's limit of messages or SMS parts a day (messages_per_day, parts_per_day)",
            ["domain", "unit"],
            registry=r,
        )
        self.retransmissions = Counter(
            "smtp2pulse_retransmissions",
            "Deliveries a client sent again after losing our 250: answered 250, not stored again",
            registry=r,
        )
        self.bounces = Counter(
            "smtp2pulse_bounces", "Delivery status notifications by result", ["result"], registry=r
        )

        # The platform's last word that our configuration is wrong (a 4xx but 429: a wrong
        # api.base_url or token) until it next takes a request; /healthz shows it.
        self.platform_error = ""

    def platform_answered(self, config_error: str, taken: bool) -> None:
        """One request's result: `config_error` if its reply said our configuration is wrong,
        `taken` if the platform answered it with a 2xx."""
        if config_error:
            self.platform_error = config_error
        elif taken:
            self.platform_error = ""

    def refusal(self, reason: str | None) -> None:
        """Count a reply under the reason it names (gateway.smtp.replies); None: no refusal."""
        if reason is not None:
            self.refused.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
