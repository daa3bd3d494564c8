"""The app object that gunicorn (`gunicorn wsgi:app`) and `flask` find."""
import click

from chatbot import create_app, create_config_error_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    # gunicorn and the workers must not start on bad settings; under the flask CLI (a click
    # command is running) `flask check-config` should still be able to list the problems.
    if click.get_current_context(silent=True) is None:
        raise
    app = create_config_error_app(error)
