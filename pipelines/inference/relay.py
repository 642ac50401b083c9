"""Stages of a pipeline run side by side on a stream of items, each in its own thread."""

from __future__ import annotations


class Relay:
    """Functions applied in a chain, each in its own thread, on a stream of items.

    `put(item)` hands an item to the first function; each function's result goes to the next
    (a result of None goes no further). Each stage holds at most `depth` items, so a slow stage
    holds up the producer instead of piling up memory. On leaving the `with` block every item is
    processed (with `flush`, the first function is called once more with None, to hand on what it
    holds back) and the threads end; the first exception of any stage is raised in the caller
    (also from `put`), and an interrupt of the caller stops the threads.

    torch runs `threads` intra-op threads while the relay runs (default one: the stages
    themselves use the cores), and the caller's setting is restored at the end. torch's setting
    is the process's, not a thread's (a stage setting it would change the caller's too), so the
    relay sets it once, for all.
    """

    _END = object()

    def __init__(self, stages, *, depth: int = 2, flush: bool = False, threads: int = 1) -> None:
        import queue
        import threading

        self.stages, self.flush, self.torch_threads = stages, flush, threads
        self.queues = [queue.Queue(maxsize=depth) for _ in stages]
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._serve, args=(index,), daemon=True)
            for index in range(len(stages))
        ]

    def __enter__(self) -> Relay:
        import torch

        self.threads_before = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        for thread in self.threads:
            thread.start()
        return self

    def put(self, item) -> None:
        """Hand `item` to the first stage (blocks while it holds `depth` items)."""
        self._raise()
        self.queues[0].put(item)

    def __exit__(self, kind, error, trace) -> None:
        import torch

        try:
            if kind is None and self.flush:
                self.queues[0].put(None)
            self.queues[0].put(self._END)
            for thread in self.threads:
                thread.join()
        finally:
            torch.set_num_threads(self.threads_before)
        if kind is None:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _serve(self, index: int) -> None:
        inbox, stage = self.queues[index], self.stages[index]
        outbox = self.queues[index + 1] if index + 1 < len(self.stages) else None
        while True:
            item = inbox.get()
            if item is self._END:
                if outbox is not None:
                    outbox.put(self._END)
                return
            if self.error is not None:
                continue  # a stage failed: drain, so that nobody waits on a full queue
            try:
                result = stage(item)
            except BaseException as error:  # handed to the caller
                self.error = error
                continue
            if result is not None and outbox is not None:
                outbox.put(result)
