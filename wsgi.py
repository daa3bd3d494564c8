"""The app object that gunicorn (`gunicorn wsgi:app`) and `flask` find."""
from chatbot import create_app

app = create_app()
