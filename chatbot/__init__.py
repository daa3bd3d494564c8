"""The WhatsApp AI assistant: a Flask app that takes Twilio webhooks and queues answers."""
from __future__ import annotations

from flask import Flask

from config import Config


def create_app(config: Config | None = None, services=None) -> Flask:
    """Wire the app: settings, database, clients, blueprint and commands.

    Pass `services` (already built, e.g. aimed at test fakes) to use them and their settings.
    """
    from chatbot import admin, cli, db, security, webhook
    from chatbot.logs import configure_logging
    from chatbot.services import build_services

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
    security.init_app(app, config)
    app.extensions["chatbot"] = services
    db.init_app(app)
    app.register_blueprint(webhook.bp)
    admin.build_admin(app)
    cli.init_app(app)
    configure_logging()
    return app
