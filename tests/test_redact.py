"""Secrets and phone numbers stay out of logs and pages."""
from chatbot.redact import mask_phone, mask_secret, redact_headers


def test_phone_numbers_are_masked_in_the_middle():
    assert mask_phone("whatsapp:+15550001234") == "whatsapp:+1555•••1234"
    assert mask_phone("+15550001234") == "+1555•••1234"


def test_api_keys_show_only_prefix_and_last_four():
    assert mask_secret("sk-or-v1-0123456789abcdefa1b2") == "sk-or-…a1b2"
    assert mask_secret("plainsecretvalue9876") == "…9876"
    assert mask_secret("short") == "…rt"
    assert mask_secret("") == ""


def test_secret_headers_are_redacted_case_insensitively():
    headers = {"X-Twilio-Signature": "abc", "authorization": "Basic x", "Cookie": "s=1", "User-Agent": "TwilioProxy"}
    assert redact_headers(headers) == {"X-Twilio-Signature": "[redacted]", "authorization": "[redacted]",
                                       "Cookie": "[redacted]", "User-Agent": "TwilioProxy"}
