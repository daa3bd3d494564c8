"""GET /metrics: bearer-protected, Prometheus's format, counters that move by exactly what happened."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from config import Config
from tests.conftest import PROJECT_DIR
from tests.support import inbound_form

TOKEN = "metrics-token-0123456789"
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def env(env):
    return {**env, "METRICS_TOKEN": TOKEN}


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def moved(before: dict, after: dict) -> dict[tuple, float]:
    """The samples that changed between two scrapes, by how much (gauges and creation times left out)."""
    return {key: round(value - before.get(key, 0.0), 9) for key, value in after.items()
            if not key[0].startswith("chatbot_queue") and not key[0].endswith("_created")
            and value != before.get(key, 0.0)}


def test_counters_move_by_exactly_what_a_burst_of_webhooks_did(client, post_webhook, run_jobs, fake_twilio):
    before = scrape(client)
    forms = [post_webhook.message(f"Question {n}", sender=f"whatsapp:+1555000{n:04d}") for n in range(3)]
    assert post_webhook(forms[0]).status_code == 200  # Twilio delivers one again
    assert post_webhook(inbound_form("Forged"), signature="forged").status_code == 403
    queued = scrape(client)
    assert queued[("chatbot_queue_depth", ())] == 3
    assert queued[("chatbot_queue_oldest_job_age_seconds", ())] >= 0
    run_jobs()
    after = scrape(client)
    assert after[("chatbot_queue_depth", ())] == 0 and after[("chatbot_queue_reachable", ())] == 1
    changes = moved(before, after)
    cost = changes.pop(("chatbot_ai_cost_usd_total", (("model", MODEL),)))
    assert cost == pytest.approx(3 * 0.00001)
    latency = {key: value for key, value in changes.items() if key[0].startswith("chatbot_ai_latency_seconds")}
    assert latency[("chatbot_ai_latency_seconds_count", (("model", MODEL),))] == 3
    assert {key: value for key, value in changes.items() if key not in latency} == {
        ("chatbot_webhook_requests_total", (("verdict", "allowed"),)): 3,
        ("chatbot_webhook_requests_total", (("verdict", "duplicate"),)): 1,
        ("chatbot_webhook_requests_total", (("verdict", "bad_signature"),)): 1,
        ("chatbot_jobs_total", (("outcome", "answered"),)): 3,
        ("chatbot_ai_calls_total", (("outcome", "answered"),)): 3,
        ("chatbot_ai_tokens_total", (("kind", "prompt"), ("model", MODEL))): 36,
        ("chatbot_ai_tokens_total", (("kind", "completion"), ("model", MODEL))): 21,
        ("chatbot_whatsapp_sends_total", (("outcome", "sent"),)): 3,
    }
    assert len(fake_twilio.sent) == 3


def test_failed_sends_are_counted_as_permanent(client, post_webhook, run_jobs, fake_twilio):
    before = scrape(client)
    fake_twilio.then(fake_twilio.error(400, 21211, "Invalid 'To' Phone Number"))
    post_webhook.message("Hello")
    run_jobs()
    changes = moved(before, scrape(client))
    assert changes[("chatbot_whatsapp_sends_total", (("outcome", "failed_permanent"),))] == 1
    assert ("chatbot_whatsapp_sends_total", (("outcome", "sent"),)) not in changes


def test_output_names_no_number_and_no_message_text(client, post_webhook, run_jobs):
    post_webhook.message("My secret plan for Tuesday", sender="whatsapp:+15557654321")
    run_jobs()
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    assert "chatbot_webhook_requests_total" in text
    assert "secret plan" not in text and "7654321" not in text and "whatsapp:" not in text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", TOKEN, f"Basic {TOKEN}"])
def test_a_missing_or_wrong_token_is_refused(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "chatbot_" not in response.get_data(as_text=True)


def test_without_metrics_token_there_is_no_metrics_page(app_with):
    client = app_with(metrics_token="").test_client()
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


COUNT_ONE_WEBHOOK = """
import sys
from chatbot import metrics
metrics.share_between_processes(sys.argv[1])
metrics.count_webhook("allowed")
"""


def test_processes_sharing_the_folder_are_added_up_and_a_new_run_starts_from_zero(tmp_path, config):
    folder = str(tmp_path / "metrics")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", COUNT_ONE_WEBHOOK, folder], cwd=PROJECT_DIR, check=True, timeout=60)
    scrape_script = f"""
import sys
from chatbot import create_app, metrics
from config import Config
metrics.share_between_processes(sys.argv[1], remove_stale=sys.argv[2] == "new run")
app = create_app(Config.from_mapping({{"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": {config.field_encryption_key!r},
                                      "REDIS_URL": {config.redis_url!r}, "METRICS_TOKEN": "t",
                                      "DATABASE_URL": {"sqlite:///" + str(tmp_path / "db.sqlite3")!r}}}))
print(app.test_client().get("/metrics", headers={{"Authorization": "Bearer t"}}).get_data(as_text=True))
"""

    def allowed(run: str) -> str:
        output = subprocess.run([sys.executable, "-c", scrape_script, folder, run], cwd=PROJECT_DIR, check=True,
                                capture_output=True, text=True, timeout=60).stdout
        return [line for line in output.splitlines() if line.startswith("chatbot_webhook_requests_total{")]

    assert allowed("same run") == ['chatbot_webhook_requests_total{verdict="allowed"} 2.0']
    assert allowed("new run") == []


COUNT_AND_SCRAPE = """
import sys
from chatbot import create_app, metrics
from config import Config
# As worker.py or gunicorn's start would: the deployment's settings name its folder.
config = Config.from_mapping({"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": sys.argv[2], "REDIS_URL": sys.argv[3],
                              "METRICS_TOKEN": "t", "DATABASE_URL": sys.argv[1]})
metrics.share_between_processes(config.metrics_dir, remove_stale=sys.argv[4] == "web start")
if sys.argv[4] == "count":
    metrics.count_webhook("allowed")
else:
    app = create_app(config)
    print(app.test_client().get("/metrics", headers={"Authorization": "Bearer t"}).get_data(as_text=True))
"""


def test_two_deployments_on_one_machine_neither_add_up_nor_delete_each_others_counts(tmp_path, config):
    first, second = (f"sqlite:///{tmp_path / name / 'chatbot.sqlite3'}" for name in ("first", "second"))

    def run(database_url: str, what: str) -> list[str]:
        output = subprocess.run([sys.executable, "-c", COUNT_AND_SCRAPE, database_url, config.field_encryption_key,
                                 config.redis_url, what], cwd=PROJECT_DIR, check=True, capture_output=True, text=True,
                                timeout=60).stdout
        return [line for line in output.splitlines() if line.startswith("chatbot_webhook_requests_total{")]

    run(first, "count")  # the first deployment's worker, ended since
    assert run(second, "web start") == []  # the second one's web starts: nothing of the first's is counted
    assert run(first, "scrape") == ['chatbot_webhook_requests_total{verdict="allowed"} 1.0']  # nor deleted
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first", "second"]
    assert [path.name for path in (tmp_path / "first").iterdir()] == ["chatbot.sqlite3.metrics"]


def test_each_deployment_has_a_metrics_folder_of_its_own_unless_one_is_named(env, tmp_path):
    def folder(**settings) -> str:
        unnamed = {name: value for name, value in env.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
        return Config.from_mapping({**unnamed, **settings}).metrics_dir

    sqlite = folder(DATABASE_URL=f"sqlite:///{tmp_path / 'bot.sqlite3'}")
    assert sqlite == f"{tmp_path / 'bot.sqlite3'}.metrics"
    sales, support = (folder(DATABASE_URL=f"postgresql://bot@db.example.com/{name}") for name in ("sales", "support"))
    assert sales != support and Path(sales).parent == Path(support).parent == PROJECT_DIR / "instance"
    assert folder(DATABASE_URL=f"sqlite:///{tmp_path / 'bot.sqlite3'}", PROMETHEUS_MULTIPROC_DIR="/srv/m") == "/srv/m"


def test_handoffs_are_counted_by_reason_and_the_first_human_reply_timed(client, post_webhook, run_jobs):
    from chatbot.models import Conversation, Handoff
    from chatbot.takeover import store_operator_reply

    before = scrape(client)
    post_webhook(inbound_form("I'd like to talk to a person", "whatsapp:+15550001111"))
    run_jobs()
    conversation = Conversation.get_by_id(Handoff.get().conversation_id)
    store_operator_reply(conversation, "Hi, this is Sam from the team.", "ops")
    store_operator_reply(conversation, "Anything else?", "ops")  # only the first reply is timed
    changes = moved(before, scrape(client))
    assert changes[("chatbot_handoffs_total", (("reason", "customer_request"),))] == 1
    assert changes[("chatbot_handoff_first_reply_seconds_count", ())] == 1
    assert Handoff.get().first_reply_at is not None
