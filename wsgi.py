"""The app object that gunicorn (`gunicorn wsgi:app`) and `flask` find."""
import click

from chatbot import create_app, create_config_error_app
from config import Config, ConfigError

# Under the flask CLI a click command is running; under gunicorn nothing is.
serving_web = click.get_current_context(silent=True) is None
try:
    # Only the web process checks signatures, so only it insists on PUBLIC_BASE_URL: `flask init-db`
    # and the other commands run without it, and `flask check-config` reports it missing.
    app = create_app(Config.from_env(serving_web=serving_web))
except ConfigError as error:
    # gunicorn and the workers must not start on bad settings; under the flask CLI
    # `flask check-config` should still be able to list the problems.
    if serving_web:
        raise
    app = create_config_error_app(error)
