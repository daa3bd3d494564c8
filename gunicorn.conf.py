"""gunicorn settings for the web process (read automatically from the working directory).

Process-level variables read here (the app's own settings are read by config.py):
PORT, WEB_CONCURRENCY, GUNICORN_THREADS, FORWARDED_ALLOW_IPS.
"""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Heroku sets WEB_CONCURRENCY from the dyno size; elsewhere set it to about 2 per CPU core.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# One thread per worker: the webhook is CPU-bound and short, and extra threads only contend for
# the GIL and the database's write lock (measured: longer tails, no more throughput).
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# The webhook answers in milliseconds; anything slower than this is stuck.
timeout = 30
# On SIGTERM, requests in flight get this long to finish (Heroku and Render allow 30 s).
graceful_timeout = 30
keepalive = 5
# Peers whose X-Forwarded-Proto gunicorn believes. The app itself trusts one proxy hop of
# X-Forwarded-* (ProxyFix), so this only matters to gunicorn's own idea of the scheme.
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
