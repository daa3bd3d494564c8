"""The throughput baseline: a bare Flask endpoint that answers like the webhook and does nothing else."""
from flask import Flask, Response

from chatbot.web import EMPTY_TWIML

app = Flask(__name__)


@app.post("/whatsapp/webhook")
def receive_message():
    """Answer with the webhook's empty TwiML."""
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")
