"""Measure what tools cost an answer: the worker's own time for an answer with one round of tool calls
against one without, and one tool call's time and memory when the endpoint answers a lot.

Run by hand: `python bench/tools.py` (about half a minute; `--help` for the options). It starts its
own Redis and the loopback fakes of tests/fakes.py (the model answers at once, so what is measured is
ours, not a provider's), on an SQLite file (or `--postgres`), in this process. Two measurements:

1. Answers: `--answers` (100) messages from different senders through the webhook and a real RQ
   worker, first with no tool offered, then with `order_status` offered and called once per answer
   (two model requests, one request to the fake business API, one stored call). Prints p50/p99 of
   the worker's time per answer for both, and the difference. Goal: a tool round adds ≤ 25 ms p50 of
   our own time (the model's second request is the provider's latency, on top). Both runs offer the
   built-in tools (request_human, schedule_follow_up): the model takes tools.
2. Large answers: `--calls` (50) calls to an endpoint answering 5 MB. Only 256 KB of it is ever read
   and 4 KB goes to the model: prints p50/p99 of one call and the process's memory growth. Goal:
   growth ≤ 20 MB.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


from bench import knowledge  # noqa: E402
from bench.knowledge import PUBLIC_BASE_URL, percentile, resident_mib  # noqa: E402
from chatbot.models import ToolUse  # noqa: E402
from chatbot.models.db import database  # noqa: E402
from chatbot.outbound import OutboundGuard  # noqa: E402
from chatbot.tools.definitions import ToolDefinition, save  # noqa: E402
from tests.fakes import FakeOpenRouter, FakeServer, Recorded, Scripted  # noqa: E402
from tests.support import (  # noqa: E402
    BurstWorker,
    inbound_form,
    sign,
    throwaway_postgres_database,
)
from worker import build_worker  # noqa: E402

ORDER = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
MODEL = "openai/gpt-4o-mini"


class BusinessAPI(FakeServer):
    def default_answer(self, request: Recorded) -> Scripted:
        if request.path.startswith("/big"):
            return Scripted(200, "x" * 5_000_000)
        return Scripted(200, {"order": request.path.rsplit("/", 1)[1], "status": "shipped", "eta": "Tuesday"})


class CallingModel(FakeOpenRouter):
    """Calls order_status when offered it and the last turn is the customer's; answers in words after."""

    def default_answer(self, request: Recorded) -> Scripted:
        body = request.body if request.path.endswith("/chat/completions") else None
        offered = {tool["function"]["name"] for tool in (body or {}).get("tools", [])}
        if body is None or "order_status" not in offered or body["messages"][-1]["role"] != "user":
            return super().default_answer(request)
        order = body["messages"][-1]["content"].rsplit(" ", 1)[-1].rstrip("?")
        completion = FakeOpenRouter.completion("")
        completion["choices"][0]["message"].update(content=None, tool_calls=[{
            "id": "call_0", "type": "function",
            "function": {"name": "order_status", "arguments": json.dumps({"order_id": order})}}])
        return Scripted(200, completion)


class Bench(knowledge.Bench):
    model_fake = CallingModel

    def __init__(self, folder: Path, database_url: str):
        super().__init__(folder, database_url, RATE_LIMIT_GLOBAL="100000")
        self.api = BusinessAPI().start()
        self.worker = build_worker(self.services, worker_class=BurstWorker)
        self.worker.log.setLevel(logging.WARNING)
        # The model takes tools from the start: both runs offer the built-in ones, only the second ours.
        self.openrouter.tool_models = {MODEL}

    def stop(self) -> None:
        self.api.stop()
        super().stop()

    def answers(self, count: int, first_sender: int) -> list[float]:
        """The worker's time for each of `count` answers, one sender each."""
        times = []
        for number in range(count):
            form = inbound_form(f"Where is order A-{number}?", f"whatsapp:+1555{first_sender + number:07d}")
            url = PUBLIC_BASE_URL + "/whatsapp/webhook"
            response = self.client.post("/whatsapp/webhook", data=form, headers={"X-Twilio-Signature": sign(url, form)})
            assert response.status_code == 200, response.get_data(as_text=True)
            started = time.perf_counter()
            self.worker.work(burst=True, with_scheduler=False)
            times.append((time.perf_counter() - started) * 1000)
        return times

    def with_and_without(self, count: int) -> dict:
        without = self.answers(count, 0)
        save(ToolDefinition(name="order_status", description="Where an order is.",
                            url_template=self.api.url + "/orders/{order_id}", parameters=ORDER),
             self.services.cipher, OutboundGuard(allow_private=True))
        self.answers(3, 10_000_000)  # the catalogue and the pools warm up
        with_tools = self.answers(count - 3, 20_000_000)
        calls = ToolUse.select().where(ToolUse.status == "ok").count()
        assert calls == count, f"{calls} tool calls for {count} answers"
        p50 = (percentile(without, 0.5), percentile(with_tools, 0.5))
        return {"answers": count, "ok_tool_calls": calls,
                "without_p50_ms": round(p50[0], 1), "without_p99_ms": round(percentile(without, 0.99), 1),
                "with_p50_ms": round(p50[1], 1), "with_p99_ms": round(percentile(with_tools, 0.99), 1),
                "added_p50_ms": round(p50[1] - p50[0], 1)}

    def large_answers(self, calls: int) -> dict:
        tool = save(ToolDefinition(name="big", description="Answers a lot.", url_template=self.api.url + "/big",
                                   parameters={"type": "object", "properties": {}}),
                    self.services.cipher, OutboundGuard(allow_private=True))
        caller = self.services.processor.toolbox.caller
        before = resident_mib()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            result = caller.call(tool, {}, seconds_left=10)
            times.append((time.perf_counter() - started) * 1000)
            assert result.status == "ok" and result.size > 0, result
        return {"calls": calls, "answered_bytes": 5_000_000, "downloaded_bytes": result.size,
                "model_reads_bytes": len(result.content.encode()), "p50_ms": round(percentile(times, 0.5), 1),
                "p99_ms": round(percentile(times, 0.99), 1), "growth_mib": round(resident_mib() - before, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--postgres", action="store_true", help="a throwaway database on 127.0.0.1:5432")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        if options.postgres:
            context = throwaway_postgres_database("postgresql://postgres@127.0.0.1:5432/postgres", "bench_tools")
            database_url = context.__enter__()
        else:
            context, database_url = None, f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        os.environ.pop("DATABASE_URL", None)
        bench = Bench(Path(folder), database_url)
        try:
            results = {"answers": bench.with_and_without(options.answers),
                       "large_answers": bench.large_answers(options.calls)}
        finally:
            bench.stop()
            database.close()
            if context is not None:
                context.__exit__(None, None, None)
    checks = {"a tool round adds <= 25 ms p50": results["answers"]["added_p50_ms"] <= 25,
              "large answers grow memory <= 20 MB": results["large_answers"]["growth_mib"] <= 20}
    for name, figures in results.items():
        print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
