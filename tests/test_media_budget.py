"""Attachments within budgets: each message's files up to MAX_MEDIA_BYTES_PER_MESSAGE, each worker's
files in memory up to MAX_MEDIA_BYTES_IN_MEMORY, the rest streamed to disk or skipped and named."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from chatbot.media import HeldBytes, MediaError, MediaTooLarge
from chatbot.processor import MEDIA_TOO_LARGE
from tests.test_media import ADA, b64, fetcher_for, pdf

MB = 1024 * 1024


def padded_pdf(size: int) -> bytes:
    """A PDF of exactly `size` bytes (comment padding after the end marker)."""
    document = pdf()
    return document + b"%" * (size - len(document))


def send_files(post_webhook, urls: list[str], content_type: str = "application/pdf", caption: str = ""):
    media = {f"MediaUrl{index}": url for index, url in enumerate(urls)}
    media.update({f"MediaContentType{index}": content_type for index in range(len(urls))})
    return post_webhook.message(caption, sender=ADA, NumMedia=str(len(urls)), **media)


@pytest.fixture
def env(env):
    """A budget of 1 MB per message, so a test's files can pass it cheaply."""
    return {**env, "MAX_MEDIA_BYTES_PER_MESSAGE": str(MB)}


def test_files_past_the_message_budget_are_skipped_and_named(post_webhook, run_jobs, fake_twilio, fake_openrouter,
                                                             caplog):
    files = [padded_pdf(600 * 1024), padded_pdf(600 * 1024), padded_pdf(300 * 1024)]
    send_files(post_webhook, [fake_twilio.add_media(file, "application/pdf") for file in files],
               caption="Compare these")
    fake_openrouter.reply_for = lambda messages: "The first costs more."
    caplog.set_level(logging.WARNING)
    run_jobs()
    _, *parts = fake_openrouter.completions[-1].body["messages"][-1]["content"]
    assert [part["file"]["file_data"] for part in parts] == [
        "data:application/pdf;base64," + b64(files[0]), "data:application/pdf;base64," + b64(files[2])]
    assert [sent["Body"] for sent in fake_twilio.sent] == [
        "(I skipped file 2: too big. A message's files may add up to 1 MB, each at most 16 MB.)\n\n"
        "The first costs more."]
    assert "attachment=2 of 3 skipped" in caplog.text


def test_a_message_whose_files_are_all_too_big_is_told_so_without_an_ai_call(post_webhook, run_jobs, fake_twilio,
                                                                             fake_openrouter):
    send_files(post_webhook, [fake_twilio.add_media(padded_pdf(2 * MB), "application/pdf") for _ in range(2)])
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [
        MEDIA_TOO_LARGE.format(files="Those files are", total="1", each="16")]
    assert fake_openrouter.requests == []


def test_a_file_streams_to_disk_and_is_read_back_whole(fake_twilio):
    document = padded_pdf(300 * 1024)
    fetched = fetcher_for(fake_twilio).fetch(fake_twilio.add_media(document, "application/pdf"), "application/pdf")
    try:
        assert fetched.file.fileno() >= 0 and fetched.size == len(document)
        assert fetched.content() == document
        assert fetched.data_url() == "data:application/pdf;base64," + b64(document)
    finally:
        fetched.close()


def test_a_file_over_what_is_left_of_the_budget_is_refused_as_too_large(fake_twilio):
    media_url = fake_twilio.add_media(padded_pdf(2048), "application/pdf")
    with pytest.raises(MediaTooLarge, match="over the 1024-byte limit"):
        fetcher_for(fake_twilio).fetch(media_url, "application/pdf", max_bytes=1024)


def test_the_files_of_a_message_are_held_in_memory_until_its_answer_is_back(post_webhook, run_jobs, services,
                                                                            fake_twilio, fake_openrouter):
    memory = services.processor.channel.media.memory
    held_while_asked = []
    fake_openrouter.delay_for = lambda messages: held_while_asked.append(memory.held) or 0.0
    document = padded_pdf(100 * 1024)
    send_files(post_webhook, [fake_twilio.add_media(document, "application/pdf")])
    run_jobs()
    assert held_while_asked == [len(document)]
    assert memory.held == 0


def test_a_worker_holds_no_more_attachment_bytes_than_its_room():
    memory = HeldBytes(limit=40)
    held, done = threading.Event(), threading.Event()

    def hold_when_there_is_room():
        with memory.hold(30, until=time.monotonic() + 10):
            held.set()
            done.wait(10)

    with memory.hold(30):
        with pytest.raises(MediaError, match="no room before the deadline"):
            with memory.hold(30, until=time.monotonic() + 0.2):
                pass
        waiting = threading.Thread(target=hold_when_there_is_room)
        waiting.start()
        assert memory.held == 30 and not held.is_set()
    assert held.wait(10) and memory.held == 30
    done.set()
    waiting.join(10)
    assert memory.held == 0
