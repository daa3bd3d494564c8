"""One logging setup for the web, worker and scheduler processes."""
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# RQ's own INFO lines for its registry maintenance, which the worker runs every few seconds.
ROUTINE_MAINTENANCE = ("cleaning registries for queue", "cleaning group registries")


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr; keep libraries that log request details or SQL parameters (phone numbers,
    message text) quiet even when the root level is DEBUG."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for chatty in ("twilio.http_client", "peewee"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


class RoutineWorkerLines(logging.Filter):
    """Drop RQ's INFO lines about routine work: registry maintenance, and the start and end of the
    jobs named (a job that fails still logs its error). A quiet minute is then a silent one."""

    def __init__(self, quiet_jobs: tuple[str, ...]):
        super().__init__()
        self.quiet = ROUTINE_MAINTENANCE + quiet_jobs

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(marker in message for marker in self.quiet)
