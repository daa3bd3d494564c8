"""One logging setup for the web, worker and scheduler processes."""
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr; keep the twilio SDK from logging every request and its headers."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
