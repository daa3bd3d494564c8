"""One logging setup for the web, worker and scheduler processes."""
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr; keep libraries that log request details or SQL parameters (phone numbers,
    message text) quiet even when the root level is DEBUG."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for chatty in ("twilio.http_client", "peewee"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
