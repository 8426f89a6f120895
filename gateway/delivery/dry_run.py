"""`api.dry_run`: the client that sends nothing. It logs each request it would make (token
masked) and reports it sent, so a new gateway can be tried without a token; it needs no HTTP
library, so it lives apart from client.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from gateway.config.model import ApiConfig
from gateway.delivery.batch import split
from gateway.delivery.request import Outcome, masked_request

log = logging.getLogger("smtp2pulse.deliver")


class DryRunClient:
    """Logs the request it would make (token masked) and reports it sent."""

    def __init__(self, api: ApiConfig) -> None:
        self.api = api

    async def start(self) -> None:
        log.warning("dry run: nothing is sent to the platform")

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        log.info(
            "dry run: would POST %s %s",
            self.api.send_url,
            json.dumps(masked_request(request, token), ensure_ascii=False),
        )
        return Outcome("sent", platform_id="dry-run")

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str) -> list[Outcome]:
        shared, messages = split(requests)
        log.info(
            "dry run: would POST %s %s and %d messages: %s",
            self.api.batch_url,
            json.dumps(masked_request(shared, token), ensure_ascii=False),
            len(messages),
            json.dumps(messages, ensure_ascii=False),
        )
        return [Outcome("sent", platform_id="dry-run")] * len(requests)
