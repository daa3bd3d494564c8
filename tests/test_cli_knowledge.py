"""flask knowledge: feeding the assistant from a shell, and reading back what it knows."""
from __future__ import annotations

import pytest

from chatbot.models import ApprovedAnswer, KnowledgeSource, Passage
from tests.fakes import FakeOpenRouter
from tests.support import BOT_NUMBER

SALES = "whatsapp:+15550007777"
HOURS = "# Opening hours\n\nThe shop opens Monday to Saturday from 9:00 to 18:00 and is closed on Sundays.\n"


@pytest.fixture
def hours_file(tmp_path):
    path = tmp_path / "hours.md"
    path.write_text(HOURS)
    return path


def test_add_a_file_list_it_ready_and_search_it(cli, services, run_jobs, hours_file):
    added = cli("knowledge", "add", str(hours_file), "--title", "Shop hours")
    assert added.exit_code == 0, added.output
    source = KnowledgeSource.get()
    assert added.output.startswith(f"added source {source.id} Shop hours for all numbers: waiting")
    assert cli("knowledge", "list").output.split() == [str(source.id), "Shop", "hours", "waiting", "0", "passages",
                                                      "all", "numbers"]
    run_jobs()
    listed = cli("knowledge", "list").output
    assert f"{source.id:>4}  Shop hours  ready  {Passage.select().count()} passages  all numbers\n" == listed

    searched = cli("knowledge", "search", "When does the shop open on Saturday?")
    assert searched.exit_code == 0, searched.output
    [line] = searched.output.splitlines()
    score, rest = line.split("  ", 1)
    assert float(score) > 0.3
    assert rest.startswith("Shop hours › Opening hours: The shop opens Monday to Saturday")


def test_a_failed_source_is_listed_with_its_reason(cli, services, run_jobs, tmp_path):
    scanned = tmp_path / "scan.pdf"
    scanned.write_bytes(b"%PDF-1.4\n%%EOF\n")
    assert cli("knowledge", "add", str(scanned)).exit_code == 0
    run_jobs()
    line = cli("knowledge", "list").output
    assert "  failed  0 passages  all numbers  " in line and "PDF" in line


def test_a_file_over_the_limit_fails_at_once_with_the_setting_named(cli, services, tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (services.config.knowledge_max_file_bytes + 1))
    result = cli("knowledge", "add", str(big))
    assert result.exit_code == 1
    assert "big.txt: failed: file over 10 MB (KNOWLEDGE_MAX_FILE_BYTES)" in result.output
    assert KnowledgeSource.get().content is None


def test_add_refuses_what_is_neither_a_file_nor_a_web_address(cli, services):
    result = cli("knowledge", "add", "ftp://example.com/file.pdf")
    assert result.exit_code == 1 and "no file 'ftp://example.com/file.pdf'" in result.output
    assert KnowledgeSource.select().count() == 0


def test_add_a_page_for_one_number_and_sync_and_remove(cli, services, run_jobs):
    added = cli("knowledge", "add", "https://shop.example.com/faq", "--number", SALES, "--sitemap")
    assert added.exit_code == 0, added.output
    source = KnowledgeSource.get()
    assert (source.kind, source.number, source.location) == ("sitemap", SALES, "https://shop.example.com/faq")
    assert f"for {SALES}" in added.output
    assert services.queue.job_ids == [f"knowledge-source-{source.id:012d}"]
    services.queue.empty()

    assert cli("knowledge", "sync", str(source.id)).output == "queued 1 source(s) to be read again\n"
    assert len(services.queue.job_ids) == 1
    assert cli("knowledge", "sync", "999").output.endswith("no source 999 (see: flask knowledge list)\n")
    assert cli("knowledge", "remove", str(source.id)).output == f"removed source {source.id}\n"
    assert KnowledgeSource.select().count() == 0
    assert cli("knowledge", "remove", str(source.id)).exit_code == 1


def test_the_default_number_is_stored_as_the_default_key(cli, services):
    assert cli("knowledge", "add", "https://shop.example.com/", "--number", BOT_NUMBER).exit_code == 0
    assert KnowledgeSource.get().number == ""


def test_approve_stores_the_answer_and_search_shows_it_wins(cli, services, run_jobs):
    result = cli("knowledge", "approve", "--question", "What are your opening hours?", "--answer", "9 to 6.")
    assert result.exit_code == 0, result.output
    approved = ApprovedAnswer.get()
    assert (approved.question, approved.answer, approved.number, approved.created_by) == (
        "What are your opening hours?", "9 to 6.", None, "cli")
    run_jobs()
    searched = cli("knowledge", "search", "what are your opening hours").output
    assert searched.startswith(f"approved answer {approved.id} (score ")
    assert "answers it, with no model call:\n  9 to 6.\n" in searched
    assert searched.endswith("no indexed knowledge for this number\n")


def test_approve_needs_both_a_question_and_an_answer(cli, services):
    result = cli("knowledge", "approve", "--question", "  ", "--answer", "9 to 6.")
    assert result.exit_code == 1 and "needs both a question and its answer" in result.output
    assert ApprovedAnswer.select().count() == 0


def test_search_says_what_is_wrong_when_the_embeddings_fail(cli, services, run_jobs, hours_file, fake_openrouter):
    cli("knowledge", "add", str(hours_file))
    run_jobs()
    fake_openrouter.embedding_error = FakeOpenRouter.error(401, "No auth credentials found")
    result = cli("knowledge", "search", "opening hours")
    assert result.exit_code == 1
    assert "embeddings:" in result.output and "fix: check EMBEDDING_MODEL and the API key" in result.output


def test_list_and_search_with_no_knowledge(cli, services):
    assert cli("knowledge", "list").output == "no knowledge yet (add some with: flask knowledge add PATH_OR_URL)\n"
    assert cli("knowledge", "search", "anything").output == "no indexed knowledge for this number\n"
