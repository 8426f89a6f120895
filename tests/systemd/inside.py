"""The systemd container test's checks, run as root inside a booted Debian 12 (stdlib only).

.ci/systemd-test boots the container and runs this with the repository copied to /root/src and
a wheelhouse in /root/wheelhouse. It follows README.md: the service-install block and the
go-live block are read from the README (between their `<!-- ci:... -->` markers) and run as
written, `sudo` being root already and `apt-get` a check that the package is there (the
container reaches no package index; pip is pointed at the wheelhouse through PIP_NO_INDEX and
PIP_FIND_LINKS); the upgrade, backup and restore blocks of docs/operations.md likewise. Then it
checks what an operator relies on, under the real systemd, with the shipped unit. Every check is
run and reported; the last line says PASS or FAIL.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

if not __package__:  # run as a script inside the container: the checkout is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.systemd.box import (
    CONFIG,
    PLATFORM_LOG,
    PLATFORM_PORT,
    RESULTS,
    SMTP,
    SRC,
    TOKEN,
    UNIT,
    CheckFailed,
    check,
    cursor,
    eventually,
    greets,
    http_json,
    journal,
    platform_requests,
    report,
    run_doc,
    send,
    sh,
    show,
)

STATE: dict[str, str] = {}


def main() -> int:
    @check("install as README.md says (venv in /opt/smtp2pulse, unit, config, enable --now)")
    def _install() -> None:
        run_doc("service-install")
        if show("ActiveState") != "active":
            raise CheckFailed(f"after enable --now: {show('ActiveState')}")
        if "dry run" not in journal().lower():
            raise CheckFailed("the dry-running service does not say it runs dry at start")

    if not RESULTS[-1][1]:
        return report()

    @check("go live as README.md says (credential token, api.dry_run: false), restart")
    def _live() -> None:
        # The one change the test makes to the README's config: the platform is the fake one.
        sh(
            f"sed -i 's#https://1-pulse.kupon.mobi/api/v1/bulk#"
            f"http://127.0.0.1:{PLATFORM_PORT}/api/v1/bulk#' {CONFIG}"
        )
        sh(
            f"systemd-run --unit=fake-platform --quiet /usr/bin/python3 "
            f"{SRC}/tests/systemd/platform.py --port {PLATFORM_PORT} --log {PLATFORM_LOG}"
        )
        run_doc("go-live", {"PASTE-YOUR-TOKEN-HERE": TOKEN})
        if show("ActiveState") != "active":
            raise CheckFailed(f"after going live: {show('ActiveState')}")

    @check("`active` only once READY=1 was sent (Type=notify): the port answers by then")
    def _ready() -> str:
        sh(f"systemctl restart --no-block {UNIT}")
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = show("ActiveState")
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "active":
                # The listeners are bound before READY: a session must be answered now.
                if not greets():
                    raise CheckFailed("active, but SMTP does not answer yet")
                if http_json("/healthz").get("status") != "ok":
                    raise CheckFailed("active, but /healthz is not ok")
                break
            time.sleep(0.05)
        if "activating" not in seen or seen[-1] != "active":
            raise CheckFailed(f"states seen: {seen}")
        return " -> ".join(seen)

    @check("a mail over SMTP reaches the platform with the credential's token")
    def _deliver() -> str:
        queue_id = send("89001234567@sms.local", "ci-deliver")
        STATE["queue_id"] = queue_id

        def arrived() -> dict[str, Any] | None:
            for request in platform_requests():
                if request["form"].get("sent_text", "").startswith("ci-deliver"):
                    return request
            return None

        request = eventually(arrived, 30, "no request reached the fake platform")
        form = request["form"]
        if form.get("token") != TOKEN:
            raise CheckFailed(
                f"token sent was not the credential's ({len(form.get('token', ''))} characters)"
            )
        if form.get("sent_to") != "79001234567" or not request["path"].endswith("/send-message"):
            raise CheckFailed(f"unexpected request: {request['path']} {form}")
        return f"queue id {queue_id}"

    @check("`smtp2pulse queue list` works as the operator, with the service's config")
    def _queue() -> str:
        done = sh(f"smtp2pulse queue -c {CONFIG} list --all", check=False)
        if done.returncode != 0:
            raise CheckFailed(f"exit {done.returncode}: {done.stderr.strip()[:300]}")
        if STATE.get("queue_id", "?") not in done.stdout:
            raise CheckFailed(f"queue id not listed:\n{done.stdout[:500]}")
        return "lists the delivered message"

    @check("`systemctl reload` keeps an open session and takes a new domain")
    def _reload() -> str:
        pid = show("MainPID")
        old = smtplib.SMTP(*SMTP, timeout=10)
        old.ehlo()
        with open(CONFIG, "a", encoding="utf-8") as config:
            config.write("  reload.local:\n    type: sms\n")
        mark = cursor()
        sh(f"systemctl reload {UNIT}")
        eventually(lambda: "config reloaded" in journal(mark), 15, "no 'config reloaded' logged")

        def new_domain_taken() -> bool:
            with smtplib.SMTP(*SMTP, timeout=5) as smtp:
                smtp.ehlo()
                smtp.mail("ci@example.com")
                return smtp.rcpt("79001234567@reload.local")[0] == 250

        eventually(new_domain_taken, 15, "the new domain is not accepted after reload")
        send("79005550000@sms.local", "ci-old-session", client=old)
        old.quit()
        if show("MainPID") != pid or show("ActiveState") != "active":
            raise CheckFailed("the daemon was restarted by a reload")
        return "old session sent after reload; reload.local accepted in a new one"

    @check("a hung event loop (SIGSTOP) is restarted by the watchdog")
    def _watchdog() -> str:
        pid, restarts = show("MainPID"), int(show("NRestarts"))
        mark = cursor()
        started = time.monotonic()
        os.kill(int(pid), 19)  # SIGSTOP: the loop stops pinging
        eventually(
            lambda: show("MainPID") not in ("0", pid) and show("ActiveState") == "active",
            120,
            "not restarted after the loop hung",
            every=1,
        )
        took = time.monotonic() - started
        if int(show("NRestarts")) != restarts + 1:
            raise CheckFailed(f"NRestarts {show('NRestarts')}, was {restarts}")
        if (
            "watchdog timeout" not in journal(mark).lower()
            and "watchdog timeout" not in sh("journalctl --no-pager -o cat -n 200").stdout.lower()
        ):
            raise CheckFailed("the journal does not say watchdog timeout")
        eventually(greets, 30, "SMTP does not answer after the watchdog restart")
        return f"restarted after {took:.0f}s (WatchdogSec={show('WatchdogUSec')})"

    @check("the state directory (the spool) survives a restart")
    def _state() -> str:
        spool = Path("/var/lib/private/smtp2pulse/spool.sqlite3")
        before = spool.stat().st_ino
        sh(f"systemctl restart {UNIT}")
        if spool.stat().st_ino != before:
            raise CheckFailed("the spool file was replaced")
        # The message accepted before the restarts is still in the spool the new process reads.
        queue_id = STATE.get("queue_id", "?")
        history = eventually(
            lambda: http_json(f"/messages/{queue_id}"),
            30,
            f"/messages/{queue_id} does not answer after the restart",
        )
        if queue_id not in json.dumps(history):
            raise CheckFailed(f"/messages/{queue_id} after restart: {history}")
        return f"{spool} kept (inode {before})"

    @check("docs/operations.md: upgrade in place, then backup and restore of the spool")
    def _upgrade_backup() -> str:
        pid = show("MainPID")
        run_doc("upgrade", doc="docs/operations.md")
        if show("MainPID") == pid or show("ActiveState") != "active":
            raise CheckFailed("the upgrade did not restart the service")
        eventually(greets, 30, "SMTP does not answer after the upgrade")
        run_doc("backup", doc="docs/operations.md")
        backups = sorted(Path("/root").glob("spool-*.sqlite3"))
        if not backups:
            raise CheckFailed("the backup command made no file")
        # Accepted after the backup: the restored spool must not know it.
        later = send("79001230000@sms.local", "ci-after-backup")
        run_doc(
            "restore", {"/root/spool-BACKUP.sqlite3": str(backups[-1])}, doc="docs/operations.md"
        )
        queue_id = STATE.get("queue_id", "?")
        eventually(
            lambda: http_json(f"/messages/{queue_id}"),
            30,
            f"/messages/{queue_id} is gone after the restore",
        )
        try:
            http_json(f"/messages/{later}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return f"restored {backups[-1].name}; the later message is not in it"
            raise
        raise CheckFailed(f"{later}, accepted after the backup, is in the restored spool")

    @check("the unit's LimitNOFILE=65536 reaches the daemon (as far as the machine allows)")
    def _nofile() -> str:
        def open_files(pid: str) -> list[int]:
            limits = Path(f"/proc/{pid}/limits").read_text(encoding="utf-8")
            line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
            return [int(word) for word in line.split()[3:5]]

        if show("LimitNOFILE") != "65536":
            raise CheckFailed(f"the unit's LimitNOFILE is {show('LimitNOFILE')}")
        # systemd cannot give more than it has: a CI machine may hold the container below it.
        ceiling = open_files("1")[1]
        soft, _hard = open_files(show("MainPID"))
        if soft != min(65536, ceiling):
            raise CheckFailed(f"the daemon may open {soft} files (systemd's hard limit {ceiling})")
        return f"{soft}" + (f" (this machine caps systemd at {ceiling})" if ceiling < 65536 else "")

    @check("`systemd-analyze security` exposure of the unit is at most 2.0")
    def _security() -> str:
        out = sh(f"systemd-analyze security {UNIT}", check=False).stdout
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        if not found:
            raise CheckFailed(f"no exposure level in:\n{out[-500:]}")
        if float(found.group(1)) > 2.0:
            raise CheckFailed(f"exposure {found.group(1)} > 2.0")
        return f"exposure {found.group(1)}"

    @check("`systemctl stop` drains an open session (421) and exits 0")
    def _stop() -> str:
        session = smtplib.SMTP(*SMTP, timeout=10)
        session.ehlo()
        mark = cursor()
        sh(f"systemctl stop {UNIT}", timeout=60)
        try:
            code = session.noop()[0]
        except smtplib.SMTPServerDisconnected:
            code = 0
        result = (show("Result"), show("ExecMainCode"), show("ExecMainStatus"))
        if result != ("success", "1", "0"):
            raise CheckFailed(f"Result, ExecMainCode, ExecMainStatus = {result}")
        logged = journal(mark)
        if "draining" not in logged or "stopped" not in logged:
            raise CheckFailed(f"no drain in the log:\n{logged[-800:]}")
        if code not in (0, 421):
            raise CheckFailed(f"the open session got {code}, not 421 or a close")
        return f"exit 0, session got {code or 'closed'}"

    return report()


if __name__ == "__main__":
    sys.exit(main())
