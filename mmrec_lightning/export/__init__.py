"""Serving artefacts: user and item vectors with nearest-neighbour indexes (``export``), and the queries
answered from them (``recommend``)."""
