"""fst.serving: the HTTP server (`fst-serve`) and the Telegram bot (`fst.serving.telegram`).

`create_app(settings)` in `app.py` builds the FastAPI app; `scheduler.py` batches requests
for the one `fst.runtime.Generator` it owns. Nothing here imports torch.
"""
