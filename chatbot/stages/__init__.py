"""The gates a user message passes before the AI, one per module, each answering one question.

In the order a WhatsApp message meets them: `commands` (the user's own commands and STOP),
`takeover` (an operator is answering), `access` (allowlist or blocklist), `budget` (spending caps),
`deadline` (no time left in this job). A channel (WhatsApp, the console, the playground) names its
own list; the processor asks each in turn and applies the first verdict (see `base`).
"""
