"""The webhook app: `POST /webhook` verifies, records and queues; a worker thread does the work; `GET /healthz`.

GitHub gives a delivery 10 seconds, so the request only checks the signature, writes the delivery to SQLite
and puts it on the queue (202). A redelivery of an id already handled is answered 200 and not run again; one
whose earlier run failed is queued again (a manual redelivery is how an operator retries). Deliveries that
were accepted but not finished when the server stopped are run when it starts again. Creating the app
contacts nothing but its SQLite file.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bot.server.store import Budget, Store
from bot.server.webhooks import DELIVERY_HEADER, Event, WebhookError, parse

log = logging.getLogger("arbot.server")

Handler = Callable[[Event], Any]
PAUSED_FLAG = "paused"


@dataclass
class ServerSettings:
    secret: str
    state_path: Path | str
    repo: str | None = None
    paused: bool = False  # the config switch; `/arbot pause` sets the store's flag instead
    catch_up_seconds: float | None = None  # idle time after which the worker catches up with GitHub again
    experiments_per_day: int | None = None
    runner_minutes_per_day: float | None = None


class Worker:
    """One background thread that runs the handler on each queued delivery, in order."""

    def __init__(self, store: Store, handler: Handler, on_start: Callable[[], Any] | None = None,
                 every: float | None = None):
        """`on_start` runs first in the worker thread (GitHub mode: rebuild the state from GitHub), and again
        whenever no delivery came for `every` seconds: a merge GitHub refused once, or a run whose webhook was
        lost, is picked up without waiting for the next event."""
        self.store, self.handler, self.on_start, self.every = store, handler, on_start, every
        self.queue: queue.Queue[Event | None] = queue.Queue()
        self.busy: str | None = None  # the delivery being handled
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for event in self.store.pending():
            log.info("delivery %s (%s): resumed after a restart", event.delivery_id, event.kind)
            self.queue.put(event)
        self._thread = threading.Thread(target=self._run, name="arbot-webhook-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the delivery in hand, then stop; whatever is still queued stays queued in the store."""
        if self._thread is None:
            return
        while True:  # drop the queue: the store keeps those deliveries as queued for the next start
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def put(self, event: Event) -> None:
        self.queue.put(event)

    def __len__(self) -> int:
        return self.queue.qsize() + (1 if self.busy else 0)

    def _catch_up(self, why: str) -> None:
        if self.on_start is None:
            return
        self.busy = why
        try:
            self.on_start()
        except Exception as e:  # noqa: BLE001 - the deliveries still run; the log says what failed
            log.error("%s failed: %s\n%s", why, e, traceback.format_exc())
        finally:
            self.busy = None

    def _run(self) -> None:
        self._catch_up("startup")
        while True:
            try:
                event = self.queue.get(timeout=self.every if self.on_start is not None else None)
            except queue.Empty:
                self._catch_up("catch-up")
                continue
            if event is None:
                return
            self.busy = event.delivery_id
            try:
                self.handler(event)
            except Exception as e:  # noqa: BLE001 - one bad delivery must not stop the worker
                log.error("delivery %s (%s) failed: %s\n%s", event.delivery_id, event.kind, e, traceback.format_exc())
                self.store.finish(event.delivery_id, error=f"{type(e).__name__}: {e}")
            else:
                log.info("delivery %s (%s) handled", event.delivery_id, event.kind)
                self.store.finish(event.delivery_id)
            finally:
                self.busy = None


def create_app(settings: ServerSettings, handler: Handler, store: Store | None = None,
               on_start: Callable[[], Any] | None = None, progress: Callable[[], dict] | None = None) -> FastAPI:
    """`progress`: the research's state for /healthz (GitHub mode: the driver's runs in flight, stale rate,
    trajectory)."""
    store = store or Store(settings.state_path)
    budget = Budget(store, settings.experiments_per_day, settings.runner_minutes_per_day)
    worker = Worker(store, handler, on_start, settings.catch_up_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        log.info("arbot webhook server ready (repo %s, %d deliveries resumed)", settings.repo or "any", len(worker))
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(title="arbot webhooks", lifespan=lifespan)
    app.state.store, app.state.worker, app.state.budget, app.state.settings = store, worker, budget, settings

    def paused() -> bool:
        return settings.paused or store.flag(PAUSED_FLAG) == "1"

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await request.body()
        try:
            event = parse(request.headers, body, settings.secret)
        except WebhookError as e:
            log.warning("delivery %s rejected (%d): %s", request.headers.get(DELIVERY_HEADER, "?"), e.status, e)
            return JSONResponse({"error": str(e)}, status_code=e.status)
        if store.add(event):
            worker.put(event)
            return JSONResponse({"queued": event.delivery_id, "event": event.kind}, status_code=202)
        state = store.state(event.delivery_id)
        if state == "failed":
            log.info("delivery %s (%s): redelivered after a failure, queued again", event.delivery_id, event.kind)
            store.requeue(event.delivery_id)
            worker.put(event)
            return JSONResponse({"queued": event.delivery_id, "event": event.kind, "retry": True}, status_code=202)
        log.info("delivery %s (%s): redelivery of a %s delivery, ignored", event.delivery_id, event.kind, state)
        return JSONResponse({"duplicate": event.delivery_id, "state": state}, status_code=200)

    @app.get("/healthz")
    def healthz():
        return {
            "status": "ok",
            "repo": settings.repo,
            "queue": len(worker),
            "handling": worker.busy,
            "deliveries": store.counts(),
            "paused": paused(),
            "budget": budget.state(),
            "research": research(),
        }

    def research() -> dict | None:
        if progress is None:
            return None
        try:
            return progress()
        except Exception as e:  # noqa: BLE001 - the health check must answer even when the mirror is unreadable
            return {"error": f"{type(e).__name__}: {e}"}

    return app
