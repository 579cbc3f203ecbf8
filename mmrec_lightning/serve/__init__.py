"""``serve``: an export behind HTTP on LitServe — recommendations, similar items, and new items encoded by the
checkpoint's item tower and added live.

    server.py     the command, the LitServer and ``GET /info``
    search.py     ``POST /recommend``, ``POST /similar`` and what every endpoint shares (torch-free workers)
    new_items.py  ``POST /items``: images checked and decoded, the item tower run on whole batches
    catalogue.py  the export read-only and memory-mapped, with the added items, searched in batches
    additions.py  added items, persisted atomically beside the export
    requests.py   request bodies checked into queries, or rejected with one message
    guard.py      body size, content type and JSON checked before a request reaches a worker
"""
