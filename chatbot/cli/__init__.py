"""flask commands for operators: exit 0 when done, 1 when a check or an operation failed, 2 on bad usage.

This module only registers them; each job's commands live in its own chatbot/cli/*.py module.
"""
from __future__ import annotations

import click

from chatbot.cli import ai_config, campaigns, conversations, knowledge, numbers, setup, tools, users
from config import ConfigError

COMMANDS = [
    setup.init_db_command,
    setup.check_config_command,
    setup.test_whatsapp_command,
    ai_config.ai_config_group,
    numbers.numbers_group,
    knowledge.knowledge_group,
    tools.tools_group,
    campaigns.campaigns_group,
    conversations.chat_command,
    conversations.conversations_group,
    conversations.cleanup_command,
    setup.create_admin_command,
    users.users_group,
    setup.rotate_key_command,
    conversations.retry_failed_command,
]


def init_app(app) -> None:
    """Register every operator command on `app`."""
    for command in COMMANDS:
        app.cli.add_command(command)


def init_config_error_app(app, error: ConfigError) -> None:
    """Register check-config to report `error`, and in place of every other command one that names it."""
    app.extensions[setup.CONFIG_ERROR] = error
    for command in COMMANDS:
        app.cli.add_command(command if command is setup.check_config_command else _refusing(command, error))


def _refusing(command: click.Command, error: ConfigError) -> click.Command:
    def refuse():
        raise click.ClickException(f"{error}\nRun `flask check-config` for how to fix each one.")

    return click.Command(command.name, callback=refuse, help=command.help, short_help=command.short_help,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})
