"""Continuous batching in a replica, as itera-server's scheduler (server/scheduler.cpp): one thread
owns an itera.Batch of `parallel` slots. Each step it admits queued requests into free slots, feeds
every active slot in one Batch.run (a new request's whole prompt beside the others' last token),
samples each slot's next token with the request's own itera.Sampler (the library's sampler) and hands the piece to the request's
asyncio queue. A slot is freed at max_tokens, <EOS>, a stop string, or when its client left.
Batch.run releases the GIL, so the replica's event loop keeps serving HTTP while a step runs."""
import collections
import threading
import time

import itera
import numpy as np

from .request import ApiError
from .stop_strings import find_stop, releasable


class Job:
    """One request in the scheduler. Events go to `events` (an asyncio.Queue on `loop`): for a
    streamed request ("text", piece) per token, then ("finish", reason, completion_tokens, ""); for
    a whole one only ("finish", reason, completion_tokens, text), so the event loop is woken once
    per request, not per token. Or ("error", ApiError)."""

    def __init__(self, request, loop, events):
        self.request, self.loop, self.events = request, loop, events
        self.cancelled = False  # set by the handler when its client left

    def emit(self, *event):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the replica's event loop is closed: it is shutting down, nobody waits
            pass


class Slot:
    def __init__(self):
        self.job = None


class Scheduler:
    def __init__(self, served, *, parallel, queue, threads=1, device="cpu"):
        self.served, self.parallel, self.queue_limit = served, parallel, queue
        self.batch = served.model.batch(parallel, threads=threads, device=device)
        self.slots = [Slot() for _ in range(parallel)]
        self.queue = collections.deque()
        self.active = 0
        self.stopping = False
        self.wake = threading.Condition()
        self.steps = 0
        self.cancelled = 0  # requests whose client left before the end
        self.step_sequences = 0
        self.step_seconds = 0.0
        self.thread = threading.Thread(target=self.run, name="itera-scheduler", daemon=True)
        self.thread.start()

    def submit(self, job):
        """Queues the job; False when `parallel` run and `queue` wait (the caller answers 503)."""
        with self.wake:
            if self.stopping or self.active + len(self.queue) >= self.parallel + self.queue_limit:
                return False
            self.queue.append(job)
            self.wake.notify()
        return True

    def stop(self):
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def alive(self):
        return self.thread.is_alive()

    def run(self):
        while True:
            with self.wake:
                self.wake.wait_for(lambda: self.stopping or self.queue or self.active > 0)
                if self.stopping:
                    break
                self.admit()
            self.step()
        gone = ApiError(503, "shutting_down", "the replica is shutting down")
        for s in self.slots:
            if s.job:
                s.job.emit("error", gone)
        with self.wake:
            for job in self.queue:
                job.emit("error", gone)
            self.queue.clear()

    def admit(self):  # holds self.wake
        free = (i for i, s in enumerate(self.slots) if s.job is None)
        while self.queue:
            job = self.queue[0]
            if job.cancelled:
                self.queue.popleft()
                self.cancelled += 1
                continue
            if job.request.max_tokens == 0:  # nothing to generate: no slot needed
                self.queue.popleft()
                job.emit("finish", "length", 0, "")
                continue
            seq = next(free, None)
            if seq is None:
                break
            self.queue.popleft()
            r = job.request
            s = self.slots[seq]
            s.job = job
            s.sampler = itera.Sampler(greedy=r.greedy, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed)
            s.feed = r.prompt
            s.text = b""
            s.sent = 0
            s.generated = 0
            self.active += 1

    def step(self):
        feeds = {}
        for seq, s in enumerate(self.slots):
            if s.job is None:
                continue
            if s.job.cancelled:
                self.cancelled += 1
                self.release(seq)
                continue
            feeds[seq] = s.feed
        if not feeds:
            return
        start = time.perf_counter()
        try:
            logits = self.batch.run(feeds)
        except Exception as e:  # every id was checked when the request was read: a bug or a device failure
            for seq in feeds:
                self.slots[seq].job.emit("error", ApiError(500, "internal_error", f"batch run failed: {e}"))
                self.release(seq)
            return
        self.steps += 1
        self.step_sequences += len(feeds)
        self.step_seconds += time.perf_counter() - start
        # the greedy picks and NaN checks of every row at once; sampled rows go through their Sampler
        best = logits.argmax(axis=1).tolist()
        nan = np.isnan(logits).any(axis=1).tolist()
        for row, seq in enumerate(feeds):
            self.next_token(seq, logits[row], None if nan[row] else best[row])

    def next_token(self, seq, logits, best):
        """As itera-run's loop: <EOS> ends the request unfed and unsent; the last allowed token is
        sent but not fed. best: the row's argmax, None when it holds NaN."""
        s = self.slots[seq]
        job, stops = s.job, s.job.request.stop
        try:
            token = best if s.sampler.greedy and best is not None else s.sampler.sample(logits)
        except ValueError as e:
            job.emit("error", ApiError(500, "internal_error", f"sampling failed: {e}"))
            self.release(seq)
            return
        if token == self.served.eos:
            self.finish(seq, len(s.text), "stop")
            return
        s.generated += 1
        start = s.sent
        s.text += self.served.pieces[token]
        at = find_stop(s.text, start, stops)
        if at >= 0:
            self.finish(seq, at, "stop")
            return
        if s.generated == job.request.max_tokens:
            self.finish(seq, len(s.text), "length")
            return
        if job.request.stream:
            self.send(s, releasable(s.text, stops) if stops else len(s.text))
        s.feed = [token]

    @staticmethod
    def send(s, end):
        if end > s.sent:
            s.job.emit("text", s.text[s.sent:end].decode("utf-8", errors="replace"))
            s.sent = end

    def finish(self, seq, end, reason):
        """Ends the slot's request with its text up to `end`."""
        s = self.slots[seq]
        if s.job.request.stream:
            self.send(s, end)
            s.job.emit("finish", reason, s.generated, "")
        else:
            s.job.emit("finish", reason, s.generated, s.text[:end].decode("utf-8", errors="replace"))
        self.release(seq)

    def release(self, seq):
        self.slots[seq].job = None
        self.batch.reset(seq)
        with self.wake:
            self.active -= 1
