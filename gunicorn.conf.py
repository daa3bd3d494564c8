"""gunicorn settings for the web process (read automatically from the working directory)."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# One thread per worker: the webhook is CPU-bound and short, and extra threads only contend for
# the GIL and the database's write lock (measured: longer tails, no more throughput).
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# The webhook answers in milliseconds; anything slower than this is stuck.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
# The runtime control socket lives at one path per user: two servers on one machine would collide.
control_socket_disable = True
