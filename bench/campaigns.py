"""Measure a campaign's pace and what each send costs us: the rate achieved against CAMPAIGN_RATE, the
most sends Twilio saw in any one second, and our own time per send.

Run by hand: `python bench/campaigns.py` (about a minute at the defaults; `--help` for the options).
It starts its own Redis and the loopback fakes of tests/fakes.py, on an SQLite file (or `--postgres`),
in this process. A campaign of `--recipients` (300) is created from a CSV as `flask campaigns create`
does (timed), then sent by a real RQ worker at `--rate` (CAMPAIGN_RATE, 10) while the fake Twilio
answers each send after `--twilio-ms` (200 ms: about what Twilio's API takes). Prints:

- create_ms: reading the file, the exclusions and storing the recipients;
- achieved rate: sends a second from the first to the last arrival at the fake Twilio;
- max_in_one_second: the most sends that arrived within any one second (must be ≤ the rate);
- own time per send, p50/p99: a send's time less its wait for the pace and Twilio's answer (our
  reads, the intent, the exclusions check, storing the message, its part and the recipient).
Goals: achieved ≥ 90 % of the rate, never more than the rate in a second, own p99 ≤ 50 ms.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench import knowledge  # noqa: E402
from bench.knowledge import percentile  # noqa: E402
from chatbot.campaigns import control, drafting  # noqa: E402
from chatbot.campaigns.audience import from_csv  # noqa: E402
from chatbot.models import Campaign  # noqa: E402
from chatbot.models.db import database  # noqa: E402
from tests.support import BurstWorker, throwaway_postgres_database  # noqa: E402
from worker import build_worker  # noqa: E402

SID = "HX" + "be9c" * 8


class Bench(knowledge.Bench):
    """A deployment in this process whose campaign sender's parts are timed per send."""

    def __init__(self, folder: Path, database_url: str, rate: float):
        super().__init__(folder, database_url, CAMPAIGN_RATE=f"{rate:g}")
        self.rate = rate
        self.own_ms: list[float] = []
        self._spent = threading.local()
        sender = self.services.campaigns
        self._time(sender.pacer, "wait_turn")
        self._time(sender.whatsapp, "send_content")
        send_one = sender._send_one

        def timed_send_one(*args, **kwargs):
            self._spent.outside = 0.0
            started = time.perf_counter()
            send_one(*args, **kwargs)
            self.own_ms.append((time.perf_counter() - started - self._spent.outside) * 1000)

        sender._send_one = timed_send_one

    def _time(self, owner, name: str) -> None:
        """Count the time `owner.name` takes as spent outside our code (the pace's wait, Twilio)."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._spent.outside += time.perf_counter() - started

        setattr(owner, name, timed)

    def campaign(self, recipients: int, twilio_seconds: float) -> dict:
        lines = "phone,first_name\n" + "".join(f"+1555{number:07d},Name{number}\n" for number in range(recipients))
        started = time.perf_counter()
        draft = drafting.create("Bench", SID, "Hi {{1}}, spring is here.", None, self.services.numbers.for_key(""),
                                from_csv(lines, "bench.csv"), self.services.access, recipients, "bench")
        create_ms = (time.perf_counter() - started) * 1000
        self.twilio.hold_answers = twilio_seconds
        control.send(draft.campaign.id, self.services.queue, None, "UTC")
        worker = build_worker(self.services, worker_class=BurstWorker)
        worker.log.setLevel(logging.WARNING)
        worker.work(burst=True, with_scheduler=False)
        assert Campaign.get_by_id(draft.campaign.id).status == "finished"
        arrivals = sorted(send.at for send in self.twilio.content_sends)
        assert len(arrivals) == recipients, f"{len(arrivals)} sends for {recipients} recipients"
        most, first = 0, 0
        for last, arrival in enumerate(arrivals):  # the window of one second ending at each arrival
            while arrival - arrivals[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        return {"recipients": recipients, "create_ms": round(create_ms, 1), "rate": self.rate,
                "achieved_per_s": round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2),
                "max_in_one_second": most, "senders": self.services.campaigns.senders,
                "own_p50_ms": round(percentile(self.own_ms, 0.5), 1),
                "own_p99_ms": round(percentile(self.own_ms, 0.99), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="CAMPAIGN_RATE")
    parser.add_argument("--twilio-ms", type=float, default=200.0, help="how long the fake Twilio takes to answer")
    parser.add_argument("--postgres", action="store_true", help="a throwaway database on 127.0.0.1:5432")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        if options.postgres:
            context = throwaway_postgres_database("postgresql://postgres@127.0.0.1:5432/postgres", "bench_campaigns")
            database_url = context.__enter__()
        else:
            context, database_url = None, f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        os.environ.pop("DATABASE_URL", None)
        bench = Bench(Path(folder), database_url, options.rate)
        try:
            figures = bench.campaign(options.recipients, options.twilio_ms / 1000)
        finally:
            bench.stop()
            database.close()
            if context is not None:
                context.__exit__(None, None, None)
    checks = {"achieved >= 90 % of CAMPAIGN_RATE": figures["achieved_per_s"] >= 0.9 * options.rate,
              "never more than CAMPAIGN_RATE in one second": figures["max_in_one_second"] <= options.rate,
              "own time per send p99 <= 50 ms": figures["own_p99_ms"] <= 50}
    print(f"campaign ({'postgres' if options.postgres else 'sqlite'}): "
          + ", ".join(f"{key} {value}" for key, value in figures.items()))
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
