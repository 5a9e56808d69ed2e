"""In-place redaction of a store written before redaction existed (or while it was off): every prompt,
reference reply and candidate of the project goes through the same redaction as an import, one
conversation (a prompt with its replies) at a time; changed texts are written in one transaction."""

from __future__ import annotations

import json

from feedback_app.redact import ConversationRedactor, RedactionReport, RedactionSettings
from feedback_app.store import Store


def redact_store(store: Store, settings: RedactionSettings, by=None) -> tuple[dict, RedactionReport]:
    """Redact the project's stored texts in place; the counts of what changed and the report."""
    report = RedactionReport()
    prompts: dict[int, tuple] = {}
    candidates: dict[int, str] = {}
    for row in store.texts_for_redaction():  # read first: the analysis runs outside any transaction
        redactor = ConversationRedactor(settings, report)
        prompt = row["prompt"]
        new_prompt = (redactor.redact(prompt) if isinstance(prompt, str)
                      else [{**m, "content": redactor.redact(m["content"])} for m in prompt])
        reference = row["reference"]
        new_reference = redactor.redact(reference) if reference is not None else None
        if new_prompt != prompt or new_reference != reference:
            prompts[row["id"]] = (new_prompt, new_reference)
        redactor.note_placeholders(json.dumps(new_prompt, ensure_ascii=False))
        for candidate_id, text in row["candidates"]:
            new_text = redactor.redact(text)
            if new_text != text:
                candidates[candidate_id] = new_text
    counts = store.rewrite_texts(prompts, candidates, by=by, detail=report.as_dict())
    return counts, report
