"""Receiving: Twilio's webhooks (inbound messages, delivery receipts) and the health check.

`webhook` takes messages (with `inbound` reading the form, `signature` checking it, `audit`
leaving the trace), `status` takes delivery receipts, `health` answers load balancers, `home` leads
the bare address to the admin, and `security` guards every response.
"""

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
WEBHOOK_PATH = "/whatsapp/webhook"
HEALTH_PATH = "/health"
