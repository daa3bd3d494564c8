"""The WhatsApp AI assistant: a Flask app that takes Twilio webhooks and queues answers."""
from __future__ import annotations

from flask import Flask, Response

from config import Config, ConfigError


def create_app(config: Config | None = None, services=None) -> Flask:
    """Wire the app: settings, database, clients, blueprint and commands.

    Pass `services` (already built, e.g. aimed at test fakes) to use them and their settings.
    """
    from chatbot import admin, auth, cli, metrics, web
    from chatbot.logs import configure_logging
    from chatbot.models import db
    from chatbot.services import build_services
    from chatbot.web import audit, health, home, security, status, webhook
    from chatbot.whatsapp import STATUS_CALLBACK_PATH

    services = services or build_services(config or Config.from_env())
    config = services.config
    app = Flask(__name__, instance_relative_config=False)
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Secure cookies whenever the service is reached over https (always, in production).
        SESSION_COOKIE_SECURE=config.public_base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    security.init_app(app, config, on_refused=audit.record_refusal)
    app.extensions["chatbot"] = services
    db.init_app(app)
    app.session_interface = auth.SessionsForPeopleOnly(
        (web.WEBHOOK_PATH, STATUS_CALLBACK_PATH, web.HEALTH_PATH, metrics.METRICS_PATH))
    app.register_blueprint(webhook.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(home.bp)
    # Browsers ask for /favicon.ico whatever a page links to.
    app.add_url_rule("/favicon.ico", "favicon", lambda: app.send_static_file("favicon.svg"))
    admin.build_admin(app)
    cli.init_app(app)
    configure_logging()
    return app


def create_config_error_app(error: ConfigError) -> Flask:
    """Wire an app for the flask CLI when the settings do not load: `flask check-config` lists the
    problems, every other command names them and exits 1, and every request answers 503."""
    from chatbot import cli

    app = Flask(__name__, instance_relative_config=False)
    cli.init_config_error_app(app, error)

    @app.before_request
    def refuse():
        return Response("The settings are invalid; run `.venv/bin/flask check-config`.\n", status=503,
                        mimetype="text/plain")

    return app
