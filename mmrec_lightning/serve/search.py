"""The LitServe APIs that search an export: ``POST /recommend`` and ``POST /similar`` (no torch in their
workers), and what every API of the server shares (:class:`ExportAPI`)."""

from __future__ import annotations

from typing import Any

import faiss
import litserve as ls
import numpy as np

from mmrec_lightning.serve.batching import DrainingLoop
from mmrec_lightning.serve.catalogue import Neighbour, ServedExport
from mmrec_lightning.serve.requests import RecommendQuery, Rejected, SimilarQuery, parse


class ExportAPI(ls.LitAPI):
    """One endpoint over an export, opened in each worker's :meth:`setup`. Requests are batched by LitServe
    (``max_batch_size``, ``batch_timeout``): :meth:`decode_request` checks each one, :meth:`answer` answers the
    good ones of a batch together, and a bad one gets its own 4xx (:class:`Rejected`) without failing the
    batch it came in.

    Args:
        export: the export folder.
        additions: the file of added items (default ``added_items.parquet`` in the export folder).
        api_path: the endpoint.
        max_batch_size: the most requests answered together.
        batch_timeout: seconds a worker waits for more requests after the first of a batch; 0: it takes
            those already queued (:class:`~mmrec_lightning.serve.batching.DrainingLoop`).
        threads: threads of each worker (FAISS, torch). One by default: the workers of all endpoints share
            the machine, and on busy cores a process's threads wait for each other at every operation.
    """

    def __init__(
        self,
        export: str,
        additions: str | None = None,
        *,
        api_path: str,
        max_batch_size: int = 32,
        batch_timeout: float = 0.0,
        threads: int = 1,
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path, loop=DrainingLoop()
        )
        self.export, self.additions, self.threads = str(export), additions, threads

    def setup(self, device: str) -> None:
        faiss.omp_set_num_threads(self.threads)
        self.catalogue = ServedExport(self.export, self.additions)

    # decode_request(self, request) takes no annotation: LitServe would make FastAPI parse the body as that
    # type; without one, a JSON body arrives decoded (a multipart form as a FormData), checked by the subclass.

    def answer(self, queries: list[Any]) -> list[dict | Rejected]:
        """The answers to a batch of checked queries."""
        raise NotImplementedError

    def predict(self, x: list) -> list:
        self.catalogue.refresh()
        good = [i for i, query in enumerate(x) if not isinstance(query, Rejected)]
        answers = list(x)
        for i, answer in zip(good, self.answer([x[i] for i in good]) if good else [], strict=True):
            answers[i] = answer
        return answers

    def encode_response(self, output):  # unannotated: LitServe would make it the response model
        return output.response() if isinstance(output, Rejected) else output

    def items(self, neighbours: list[Neighbour]) -> list[dict[str, Any]]:
        """Ranked items with their text and per-item outputs (``modality_weights``: which modality placed
        each)."""
        answer = []
        for rank, (row, score) in enumerate(neighbours, start=1):
            item, text = self.catalogue.item(row)
            answer.append({"rank": rank, "item": item, "score": score, "text": text, **self.catalogue.outputs_of(row)})
        return answer

    def unknown(self, what: str, raw_id: str, examples: list[str]) -> Rejected:
        example = f", e.g. {examples[0]!r}" if examples else ""
        return Rejected(404, f"{what} {raw_id!r} is not in this export; use the dataset's raw ids{example}")


class RecommendAPI(ExportAPI):
    """``POST /recommend {"user": "user3", "k": 10, "exclude_seen": true}``: the user's top-``k`` items by the
    model's score, without those they interacted with (in any split) unless ``exclude_seen`` is false."""

    def __init__(self, export: str, additions: str | None = None, **batching: Any) -> None:
        super().__init__(export, additions, api_path="/recommend", **batching)

    def decode_request(self, request) -> tuple[int, RecommendQuery] | Rejected:
        query = parse(RecommendQuery, request)
        if isinstance(query, Rejected):
            return query
        row = self.catalogue.user_row(query.user)
        if row is None:
            return self.unknown("user", query.user, self.catalogue.user_ids)
        return row, query

    def answer(self, queries: list[tuple[int, RecommendQuery]]) -> list[dict]:
        rows = [row for row, _ in queries]
        found = self.catalogue.recommend(rows, [q.k for _, q in queries], [q.exclude_seen for _, q in queries])
        return [{"user": q.user, "items": self.items(items)} for (_, q), items in zip(queries, found, strict=True)]


class SimilarAPI(ExportAPI):
    """``POST /similar {"item": "item12", "k": 10}``: the items nearest to an item (exported or added) by
    cosine similarity, itself left out."""

    def __init__(self, export: str, additions: str | None = None, **batching: Any) -> None:
        super().__init__(export, additions, api_path="/similar", **batching)

    def decode_request(self, request) -> tuple[int, SimilarQuery] | Rejected:
        query = parse(SimilarQuery, request)
        if isinstance(query, Rejected):
            return query
        self.catalogue.refresh()  # the item may have been added a moment ago, through another worker
        row = self.catalogue.item_row(query.item)
        if row is None:
            return self.unknown("item", query.item, self.catalogue.item_ids)
        return row, query

    def answer(self, queries: list[tuple[int, SimilarQuery]]) -> list[dict]:
        vectors = np.stack([self.catalogue.item_vector(row) for row, _ in queries])
        found = self.catalogue.similar(vectors, [q.k for _, q in queries], [row for row, _ in queries])
        return [{"item": q.item, "items": self.items(items)} for (_, q), items in zip(queries, found, strict=True)]
