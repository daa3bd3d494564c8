"""Measure how much a worker's memory grows for messages carrying ten 16 MB PDFs each.

Run by hand: `python bench/media_memory.py` (about half a minute; `--help` for the options). It starts
its own Redis, the loopback fakes of tests/fakes.py (an instant OpenRouter; Twilio's media storage
serving each PDF as 16 MB streamed from nothing) and one `python worker.py` on an SQLite file, posts
signed webhooks through the app in this process, and reads the worker's peak resident memory
(VmHWM, reset through /proc/<pid>/clear_refs before each case) against its resident memory before it.
Goals: growth ≤ 100 MB for one such message, ≤ 200 MB for three at once.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from cryptography.fernet import Fernet  # noqa: E402

from bench.proc_memory import read_kib  # noqa: E402
from chatbot import create_app  # noqa: E402
from chatbot.models import migrations  # noqa: E402
from chatbot.services import build_services  # noqa: E402
from config import Config  # noqa: E402
from tests.fakes import FakeOpenRouter, FakeTwilio  # noqa: E402
from tests.support import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, RedisServer, inbound_form, sign  # noqa: E402

PUBLIC_BASE_URL = "https://bench.example.com"
PDF_BYTES = 16 * 1024 * 1024
FILES_PER_MESSAGE = 10
GOALS_MIB = {1: 100, 3: 200}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(0.05)


def memory_kib(pid: int) -> dict[str, int]:
    return read_kib(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current resident memory (Linux ≥ 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class Bench:
    def __init__(self, folder: Path, timeout: float):
        self.folder = folder
        self.timeout = timeout
        self.redis = RedisServer(folder).start()
        self.openrouter = FakeOpenRouter().start()
        self.twilio = FakeTwilio().start()
        # The bench measures memory, not what the model says: a short answer keeps replies small.
        self.openrouter.reply_for = lambda messages: "Read them."
        self.env = {
            "SECRET_KEY": "bench", "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "REDIS_URL": self.redis.url, "DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite3'}",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_WHATSAPP_NUMBER": BOT_NUMBER,
            "TWILIO_API_BASE_URL": self.twilio.url, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "OPENROUTER_API_KEY": "sk-or-v1-bench", "OPENROUTER_BASE_URL": self.openrouter.url + "/api/v1",
            # The fakes listen on loopback.
            "ALLOW_PRIVATE_HOSTS": "1", "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        }
        (folder / "metrics").mkdir()
        self.client = create_app(services=build_services(Config.from_mapping(self.env))).test_client()
        migrations.upgrade()
        self.log = (folder / "worker.log").open("w")
        self.worker = subprocess.Popen([sys.executable, "worker.py"], cwd=PROJECT_DIR,
                                       env={**os.environ, **self.env}, stdout=self.log, stderr=subprocess.STDOUT)
        self.senders = 0

    def post(self, body: str, **extra) -> None:
        self.senders += 1
        form = inbound_form(body, f"whatsapp:+1555{self.senders:07d}", **extra)
        url = PUBLIC_BASE_URL + "/whatsapp/webhook"
        answer = self.client.post("/whatsapp/webhook", data=form, headers={"X-Twilio-Signature": sign(url, form)})
        assert answer.status_code == 200, answer.get_data(as_text=True)

    def answered(self, count: int) -> None:
        wait_until(lambda: len(self.twilio.sent) >= count, self.timeout, f"{count} replies")

    def warm_up(self) -> None:
        """One plain message and one small PDF, so imports, pools and caches are in place first."""
        self.post("hello")
        self.post("", NumMedia="1", MediaUrl0=self.twilio.add_media(b"%PDF-1.4\n", "application/pdf"),
                  MediaContentType0="application/pdf")
        self.answered(2)

    def case(self, messages: int) -> dict:
        """Post `messages` messages of ten 16 MB PDFs at once; return the worker's growth in MiB."""
        settled = len(self.twilio.sent)
        reset_peak(self.worker.pid)
        before = memory_kib(self.worker.pid)["VmRSS"]
        started = time.monotonic()
        for _ in range(messages):
            media = {}
            for index in range(FILES_PER_MESSAGE):
                media[f"MediaUrl{index}"] = self.twilio.add_media(b"%PDF-1.4\n", "application/pdf",
                                                                  declared_length=PDF_BYTES)
                media[f"MediaContentType{index}"] = "application/pdf"
            self.post("What do these say?", NumMedia=str(FILES_PER_MESSAGE), **media)
        self.answered(settled + messages)
        after = memory_kib(self.worker.pid)
        sent_to_model = sum(len(str(request.body)) for request in self.openrouter.completions[-messages:])
        return {"messages": messages, "seconds": round(time.monotonic() - started, 1),
                "rss_before_mib": round(before / 1024, 1), "peak_mib": round(after["VmHWM"] / 1024, 1),
                "growth_mib": round((after["VmHWM"] - before) / 1024, 1),
                "request_to_model_mib": round(sent_to_model / messages / 1024 / 1024, 1),
                "reply": self.twilio.sent[-1]["Body"][:120]}

    def stop(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.log.close()
        self.openrouter.stop()
        self.twilio.stop()
        self.redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each case's replies")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="media-memory-") as folder:
        bench = Bench(Path(folder), options.timeout)
        try:
            bench.warm_up()
            for messages in (1, 3):
                result = bench.case(messages)
                goal = GOALS_MIB[messages]
                verdict = "MET" if result["growth_mib"] <= goal else "NOT MET"
                print(f"{messages} message(s) of {FILES_PER_MESSAGE} × 16 MB PDFs at once: worker grew "
                      f"{result['growth_mib']} MiB (RSS {result['rss_before_mib']} → peak {result['peak_mib']} MiB), "
                      f"{result['request_to_model_mib']} MiB per request to the model, {result['seconds']} s; "
                      f"goal ≤ {goal} MiB: {verdict}")
                print(f"  last reply: {result['reply']!r}")
        finally:
            bench.stop()


if __name__ == "__main__":
    main()
