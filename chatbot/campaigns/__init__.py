"""Campaigns: an approved WhatsApp template sent once to each recipient of an audience, paced, with
its results.

- audience.py: who it goes to (a CSV file, or who wrote lately), each number once, the rest named
- template.py: how each {{n}} is filled, and the approved text as the recipient reads it
- drafting.py: creating a campaign as a draft, its recipients stored, the excluded left out
- control.py: send now or at a time, pause, resume, cancel
- pacing.py: CAMPAIGN_RATE sends a second per number, across every worker
- sending.py: each recipient sent once, with an intent and a look-up, as answers are
"""
