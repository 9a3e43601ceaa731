"""Webhooks of RunPod-style `/run` jobs: the URL's check, and the delivery of a finished job.

RunPod POSTs a finished job's reply (`{"id", "status", "output" | "error"}`) to the job's `webhook`
and retries when the receiver fails; this server does the same, at most WEBHOOK_ATTEMPTS times.
The server makes that request itself, so the URL must not reach this machine's own network: a host
that resolves to a private, loopback, link-local or reserved address is refused unless it is
listed in WEBHOOK_ALLOWLIST. The check runs when the job is submitted and again before each try (a
name can resolve elsewhere later), and each try connects to the address it checked (no second lookup,
no proxy from the environment), the reference fetcher's way; redirects are not followed.

Deliveries are isolated per receiver (scheme, host and port): each receiver has its own queue and
its own sender thread, so a receiver that accepts and never answers delays only its own webhooks,
never another's. At most MAX_QUEUED_PER_RECEIVER wait for one receiver and at most MAX_RECEIVERS
receivers have deliveries in flight; beyond either a webhook is dropped and logged (the job's
result stays on /status). Sender threads never hold the process: a stop drops what is queued.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.parse

import httpx

from higgs_tts.service import fetch

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 3  # tries in all
WEBHOOK_BACKOFF_SECONDS = (1.0, 4.0)  # waits between them
WEBHOOK_TIMEOUT_SECONDS = 10.0  # to connect, and for the answer
MAX_URL_CHARS = 2048
MAX_RECEIVERS = 64  # receivers with deliveries queued or in flight (one sender thread each)
MAX_QUEUED_PER_RECEIVER = 256  # webhooks waiting for one receiver
SENDER_IDLE_SECONDS = 30.0  # a receiver's thread ends after this long with nothing to send


class WebhookRefused(ValueError):
    """A webhook URL this server will not call; the message names the rule."""


def check_url(url: str, allowlist: tuple[str, ...] = ()) -> str:
    """The URL when it may be called; else WebhookRefused. `allowlist`: host names or addresses
    that may be private (e.g. a receiver on the same machine)."""
    _checked(url, allowlist)
    return url


def _checked(url: str, allowlist: tuple[str, ...]) -> tuple[httpx.URL, fetch.Address]:
    """The parsed URL and the address it resolved to and that was checked (the one to connect to)."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookRefused(f"webhook: at most {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhook: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook: credentials in the URL are not accepted; use a token in its path or query")
    host = parts.hostname.lower()
    try:
        target = httpx.URL(url)
        addresses = fetch.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
    except httpx.InvalidURL as exc:
        raise WebhookRefused(f"webhook: is not a valid URL ({exc})") from None
    except fetch.FetchError as exc:
        raise WebhookRefused(f"webhook: {exc}") from None
    if not addresses:
        raise WebhookRefused(f"webhook: host {host!r} has no address")
    if host not in {h.lower() for h in allowlist}:
        for address in addresses:
            if reason := fetch.blocked_range(address):  # the reference fetcher's rule, written once
                raise WebhookRefused(f"webhook: host {host!r} resolves to {address}, {reason}; this server "
                                     "calls only public hosts unless WEBHOOK_ALLOWLIST names the host")
    return target, addresses[0]


def deliver(url: str, reply: dict, allowlist: tuple[str, ...] = (), sleep=time.sleep) -> bool:
    """POST the job's reply as JSON; a 2xx answer ends it, anything else is tried again up to
    WEBHOOK_ATTEMPTS in all. True when delivered. Logs the job id and the outcome, never the URL's
    query (it may hold a token) or the output."""
    job_id = reply.get("id", "")
    where = urllib.parse.urlsplit(url).hostname
    data = json.dumps(reply).encode()
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        try:
            # checked again at each try (a name can resolve elsewhere later), and the connection goes
            # to the address checked; no proxy from the environment (it would connect by name)
            to, headers, extensions = fetch.pinned(*_checked(url, allowlist))
            with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client:
                answer = client.post(to, content=data, extensions=extensions,
                                     headers=headers | {"Content-Type": "application/json"})
            if 200 <= answer.status_code < 300:
                log.info("webhook of job %s delivered to %s (try %d)", job_id, where, attempt)
                return True
            problem = f"HTTP {answer.status_code}"  # a 3xx too: an answer, not a new place to send the job
        except WebhookRefused as exc:
            log.warning("webhook of job %s not sent: %s", job_id, exc)
            return False
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        log.warning("webhook of job %s to %s failed (try %d of %d): %s", job_id, where, attempt,
                    WEBHOOK_ATTEMPTS, problem)
        if attempt < WEBHOOK_ATTEMPTS:
            sleep(WEBHOOK_BACKOFF_SECONDS[min(attempt - 1, len(WEBHOOK_BACKOFF_SECONDS) - 1)])
    return False


def receiver(url: str) -> str:
    """Whom a webhook goes to, as deliveries are isolated: scheme, host and port."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port or (443 if parts.scheme == 'https' else 80)}"


class WebhookSender:
    """Sends each webhook on its receiver's own thread, in the order they were handed over, with
    `deliver`'s tries, waits and timeout; see the module's docstring for the bounds."""

    def __init__(self, send=deliver) -> None:
        self.send_one = send
        self.lock = threading.Lock()
        self.queues: dict[str, queue.Queue] = {}  # receiver -> its webhooks not yet sent

    def send(self, url: str, reply: dict, allowlist: tuple[str, ...] = ()) -> bool:
        """Queue the reply for its receiver; False (logged) when a bound is reached."""
        who = receiver(url)
        with self.lock:
            waiting = self.queues.get(who)
            if waiting is None:
                if len(self.queues) >= MAX_RECEIVERS:
                    log.warning("webhook of job %s dropped: %d receivers already have deliveries in flight",
                                reply.get("id", ""), MAX_RECEIVERS)
                    return False
                waiting = self.queues[who] = queue.Queue(MAX_QUEUED_PER_RECEIVER)
                threading.Thread(target=self._drain, args=(who, waiting), name="webhook", daemon=True).start()
            try:
                waiting.put_nowait((url, reply, allowlist))
            except queue.Full:
                log.warning("webhook of job %s dropped: %d webhooks already wait for %s", reply.get("id", ""),
                            MAX_QUEUED_PER_RECEIVER, urllib.parse.urlsplit(url).hostname)
                return False
        return True

    def _drain(self, who: str, waiting: queue.Queue) -> None:
        """One receiver's thread: sends its webhooks one after another; ends when idle."""
        while True:
            try:
                url, reply, allowlist = waiting.get(timeout=SENDER_IDLE_SECONDS)
            except queue.Empty:
                with self.lock:  # send() puts under this lock: nothing can arrive between the check and the end
                    if waiting.empty():
                        del self.queues[who]
                        return
                continue
            try:
                self.send_one(url, reply, allowlist)
            except Exception:  # a bug in one delivery must not end the receiver's thread
                log.exception("webhook of job %s failed", reply.get("id", ""))
