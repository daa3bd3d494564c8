"""gunicorn settings for the web process (read automatically from the working directory).

Process-level variables read here (the app's own settings are read by config.py):
PORT, WEB_CONCURRENCY, GUNICORN_THREADS, FORWARDED_ALLOW_IPS.
"""
import os

from chatbot import metrics
from config import Config

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Heroku sets WEB_CONCURRENCY from the dyno size; elsewhere set it to about 2 per CPU core.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# Eight threads per worker, for slow clients rather than throughput. gthread (gunicorn 27) parks
# a connection on its event loop only until the first bytes arrive; from then on one thread reads
# the headers and the body with no time limit, and gunicorn has no setting that bounds that read.
# With one thread per worker, two clients sending a header line every 2 s kept /health failing
# (tests/test_slow_clients.py). Idle threads cost little; busy ones share the GIL, so the webhook's
# own throughput does not grow with them. This only raises the bar: a proxy that buffers whole
# requests (Heroku's router, Render's, deploy/nginx.conf in compose) is what removes the problem.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The worker's heartbeat, not a request deadline: gthread keeps beating while a thread waits.
timeout = 30
# On SIGTERM, requests in flight get this long to finish (Heroku and Render allow 30 s).
graceful_timeout = 30
# An idle kept-alive connection waits on the event loop, not in a thread, so this costs no thread.
keepalive = 5
# Peers whose X-Forwarded-Proto gunicorn believes. The app trusts TRUSTED_PROXIES hops of
# X-Forwarded-* itself (ProxyFix), so this only matters to gunicorn's own idea of the scheme.
# Set FORWARDED_ALLOW_IPS="*" only when nothing but your proxy can reach this port.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# The heartbeat file on a disk-backed /tmp can stall workers (gunicorn's docs); /dev/shm is memory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
# Path only (%(U)s), never the query string, the referer or any header other than the user agent:
# none of those can leak a token or a phone number into the logs.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
# The runtime control socket lives at one path per user: two servers on one machine would collide.
control_socket_disable = True


def on_starting(server):
    """Before any worker starts: refuse to start on invalid settings, listing them (every worker
    would otherwise fail on them with a traceback). Then, for the workers to inherit: each counts into
    its own files in this deployment's metrics folder, and /metrics, served by any of them, adds them
    up. The files of an earlier run's processes go; a running worker.py keeps its own."""
    config = Config.from_env_or_exit(serving_web=True)
    metrics.share_between_processes(config.metrics_dir, remove_stale=True)


def child_exit(server, worker):
    """A gunicorn worker ended: its counts stay in the sum, its live gauges go."""
    metrics.forget_process(worker.pid)
