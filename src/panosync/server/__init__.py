"""Serving panosync on one's own machine: an HTTP API with the public SyncDiffusion API's fields
(`panosync serve`) and a Gradio web page (`panosync ui`).

    limits.py           what a server accepts beyond each field's range: canvas, queue, body, waiters
    schema.py           what a request may hold: settings.py's served parameters, as a pydantic model
    generation.py       the model, loaded once: checking a request against it and making one panorama
    uploads.py          images sent: ControlSync's conditions and the image inputs (image, mask_image), read
                        from base64 and checked, kept by content in the state folder
    jobs.py             durable jobs: the SQLite store of job rows, composing the two below, and retention
    condition_files.py  conditions and image inputs kept while a job refers to them or a request holds them
    folder_health.py    whether the state folder can be written and has its reserve of free space
    state_files.py      removing, sizing and listing the state folder's files; a crash's leftovers
    worker.py           the thread that runs the queued jobs in order, through any fault
    api.py              the FastAPI app: its routes and what they do with the store
    middleware.py       the bearer token and the body size limit, checked before a body is read
    waiting.py          clients waiting for their jobs (Prefer: wait), without holding a thread
    openapi.py          the schema made to describe one server: its bounds, fields, errors, token
    viewer.py           the 360° view: Photo Sphere Viewer (vendored in static/, served with the page)
    ui.py               the Gradio app
    command.py          the `serve` and `ui` subcommands
"""
