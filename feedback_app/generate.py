"""Candidate generation: K replies per prompt from a policy (the bundled model by default, or an
exported checkpoint), batched, stored as items of a generation round; and ``Jobs``, which runs it in a
background thread for the admin route so reviewers' requests are never blocked.
"""

from __future__ import annotations

import json
import random
import threading
import time
import traceback
import uuid
from typing import Callable

from feedback_app.store import Conflict, NotFound, Store

Progress = Callable[[int, int], None]


def generate_candidates(store: Store, config, round: int = 0, model: str | None = None,
                        progress: Progress | None = None, show_bar: bool = True) -> dict:
    """Generate K replies for every prompt of the project without an item in ``round``.

    Prompts go through in chunks, each chunk stored as soon as it is generated, so an interrupted run
    keeps its work and a rerun continues where it stopped. Returns counts and the model used.
    """
    from feedback_app.redact import ConversationRedactor
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path

    todo = store.prompts_needing_candidates(round)
    name = model or config.model
    if not todo:
        return {"items_added": 0, "prompts": 0, "model": name, "round": round}
    path = resolve_model_path(name)
    tokenizer = load_tokenizer(path, padding_side="left")
    policy = load_policy(path, dtype="float32")
    k = store.refresh_project().k  # the stored K: a CLI import may have changed it since the server started
    # the agents' real replies (chat-log imports) that take one candidate's place, by prompt id
    agent = store.reference_replies([pid for pid, _ in todo]) if config.agent_reply_as_candidate else {}
    redaction = config.redaction
    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.seed + round)
    sampling_record = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                       "top_p": sampling.top_p, "seed": sampling.seed}
    # Several prompts per chunk keep batches full (batch_size counts sequences: prompts x K).
    per_chunk = max(1, config.batch_size // k) * 4
    added, started = 0, time.time()
    from tqdm.auto import tqdm

    if progress:
        progress(0, len(todo))  # pages show "0 of N" while the first chunk is generated
    with tqdm(total=len(todo), desc="generate candidates", unit="prompt", disable=not show_bar) as bar:
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start:start + per_chunk]
            # prompts whose agent reply takes a candidate's place need K-1 generated replies, the others K
            chunk = [c for c in chunk if c[0] in agent] + [c for c in chunk if c[0] not in agent]
            n_agent = sum(c[0] in agent for c in chunk)
            replies, ends = [], []
            for group, n in ((chunk[:n_agent], k - 1), (chunk[n_agent:], k)):
                if group:
                    group_ends: list = []
                    replies += generate_replies(policy, tokenizer, [p for _, p in group], n, sampling,
                                                config.batch_size, progress=False, ends=group_ends)
                    ends += group_ends
            for (prompt_id, prompt), texts, reply_ends in zip(chunk, replies, ends):
                # each candidate's record says how it ended: the reviewer page shows a reply cut at the
                # token limit as cut
                records = [{**sampling_record, "finish_reason": e.finish_reason, "new_tokens": e.new_tokens}
                           for e in reply_ends]
                agent_position = None
                if prompt_id in agent:  # a position of its own per prompt: no place or id order gives it away
                    agent_position = random.Random(f"{sampling.seed}:{prompt_id}").randrange(k)
                    texts = texts[:agent_position] + [agent[prompt_id]] + texts[agent_position:]
                    records.insert(agent_position, {})
                # a policy can write personal data it learnt (or repeat a placeholder): redact before storing,
                # numbering new values after the prompt's own placeholders (the agent's reply, redacted at
                # import, comes through unchanged)
                redactor = ConversationRedactor(redaction)
                redactor.note_placeholders(json.dumps(prompt, ensure_ascii=False))
                texts = [redactor.redact(t) for t in texts]
                added += store.add_candidates(prompt_id, round, texts, model=name, checkpoint=str(path),
                                              sampling=records, agent_position=agent_position)
            bar.update(len(chunk))
            if progress:
                progress(start + len(chunk), len(todo))
    seconds = time.time() - started
    return {"items_added": added, "prompts": len(todo), "model": name, "round": round,
            "replies_per_second": round_(added * k / seconds) if seconds > 0 else None,
            "agent_replies": len(agent)}


def round_(x: float) -> float:
    return float(f"{x:.3g}")


class Jobs:
    """Background jobs of the admin routes (candidate generation, prioritising), one at a time (each loads a
    model on the server's CPUs), with progress to poll."""

    def __init__(self):
        self._jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def start_generation(self, store: Store, config, round: int, model: str | None) -> dict:
        return self._start("generate", lambda progress: generate_candidates(store, config, round, model, progress,
                                                                            show_bar=False))

    def start_prioritise(self, store: Store, config, members: int | None) -> dict:
        """``feedback_app.prioritise.prioritise`` in the background; what it would refuse (too few
        rankings, no open item) is refused here, before the job starts."""
        from feedback_app.prioritise import prioritise, prioritise_inputs

        inputs = prioritise_inputs(store, members)

        def work(progress):
            result = prioritise(store, config.model, members, config.seed, inputs)
            return {"summary": result.summary(), "items": len(result.priorities), "rankings": result.rankings,
                    "members": result.members}

        return self._start("prioritise", work)

    def _start(self, kind: str, work: Callable[[Callable[[int, int], None]], dict]) -> dict:
        with self._lock:
            running = next((j for j in self._jobs.values() if j["state"] == "running"), None)
            if running is not None:
                raise Conflict(f"a {running['kind']} job is already running; poll GET /api/admin/jobs/{running['id']}")
            job_id = uuid.uuid4().hex[:12]
            job = {"id": job_id, "kind": kind, "state": "running", "done": 0, "total": None,
                   "result": None, "error": None, "started_at": time.time()}
            self._jobs[job_id] = job

        def progress(done: int, total: int) -> None:
            job["done"], job["total"] = done, total

        def run() -> None:
            try:
                job["result"] = work(progress)
                job["state"] = "done"
            except Exception as exc:  # reported through the status route, not lost in a thread
                job["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                job["trace"] = traceback.format_exc(limit=5)
                job["state"] = "failed"

        threading.Thread(target=run, name=f"{kind}-{job_id}", daemon=True).start()
        return {k: v for k, v in job.items() if k != "trace"}

    def latest(self) -> dict | None:
        """The most recently started job (for pages that show progress), or None."""
        with self._lock:
            job = max(self._jobs.values(), key=lambda j: j["started_at"], default=None)
        return None if job is None else {k: v for k, v in job.items() if k != "trace"}

    def status(self, job_id: str) -> dict:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id}: unknown job")
        return {k: v for k, v in job.items() if k != "trace"}

    def wait(self, job_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while self._jobs[job_id]["state"] == "running" and time.time() < deadline:
            time.sleep(0.05)
        return self.status(job_id)
