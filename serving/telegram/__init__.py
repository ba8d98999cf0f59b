"""fst-telegram: a Telegram bot that continues users' texts with the generation server.

aiogram 3 on top of one shared HTTP client to `fst-serve`. Torch-free.
"""
