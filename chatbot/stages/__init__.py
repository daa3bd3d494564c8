"""The gates a user message passes before the AI, one per module, each answering one question.

In the order a WhatsApp message meets them: `optouts` (STOP and START, which work for everyone, and
the silence they ask for), `access` (allowlist or blocklist: a kept-out sender gets nothing more),
`commands` (the user's own commands), `takeover` (an operator is answering), `budget` (spending
caps, reserved before the call), `deadline` (no time left in this job). `words` holds the command
words two of them share. A channel (WhatsApp, the console, the playground) names its own list; the
processor asks each in turn and applies the first verdict (see `base`).
"""
