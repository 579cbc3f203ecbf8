"""How a worker collects a batch: LitServe's batched loop, without polling.

LitServe's own loop polls its request queue every millisecond while it waits for a batch to fill (and spins
when ``batch_timeout`` is 0), which costs CPU in every idle worker and in the queue's manager process, and
adds ``batch_timeout`` to every request. :class:`DrainingLoop` blocks until a request comes, then takes
the requests already queued behind it — as many as arrived while the previous batch was answered, so
batches grow with the load — and waits up to ``batch_timeout`` for more only if asked to.
"""

from __future__ import annotations

import time
from queue import Empty, Queue

from litserve import LitAPI
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError  # what LitServe's loops stop on
from litserve.loops.simple_loops import BatchedLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

IDLE_WAIT = 1.0  # seconds blocked on an empty queue before looking again (for the stop signal)


class DrainingLoop(BatchedLoop):
    """LitServe's :class:`BatchedLoop` (decode each request, ``predict`` on the batch, encode each answer)
    with batches collected as described in the module's docstring."""

    def get_batch_requests(
        self, lit_api: LitAPI, request_queue: Queue, transport: MessageTransport
    ) -> tuple[list, list]:
        payloads: list = []
        timed_out: list = []
        deadline = None
        while len(payloads) + len(timed_out) < lit_api.max_batch_size:
            try:
                if deadline is None:
                    request = request_queue.get(timeout=IDLE_WAIT)
                elif (remaining := deadline - time.monotonic()) > 0:
                    request = request_queue.get(timeout=remaining)
                else:
                    request = request_queue.get_nowait()
            except Empty:
                break
            if request == _SENTINEL_VALUE:
                raise _StopLoopError()
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
            response_queue_id, uid, timestamp, payload = request
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )  # sent only when LitServe restarts workers
            limit = lit_api.request_timeout
            if limit not in (None, False, -1) and time.monotonic() - timestamp > limit:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
        return payloads, timed_out
