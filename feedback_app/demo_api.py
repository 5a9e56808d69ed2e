"""REST routes of demonstrations (service: ``feedback_app.demonstrations``).

  POST /api/demonstrations                          reviewer: the reply you wanted for an item's prompt
  GET  /api/demonstrations/context/{item_id}        reviewer: an item's replies in your order, the agent's reply
  GET  /api/demonstrations/mine                     reviewer: your own, newest first
  GET  /api/admin/demonstrations                    admin: every reviewer's, filtered by status/author
  POST /api/admin/demonstrations/{id}/accept        admin: accept (audit-logged)
  POST /api/admin/demonstrations/{id}/reject        admin: reject (audit-logged)

Cookie-authenticated calls carry X-CSRF-Token and the body limit applies, as on every REST route
(``feedback_app.security``); a text over ``demonstrations.MAX_TEXT`` is a 422 naming ``text``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from feedback_app.api import ERROR_RESPONSES, Id, admin_actor, current_actor, services
from feedback_app.auth import Actor

router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)


class DemonstrationIn(BaseModel):
    item_id: Id = Field(..., description="the item whose prompt you answer (as handed to you)")
    text: str = Field(..., max_length=8000, description="the reply you wanted; 1 to 8000 characters")
    based_on: Literal["", "candidate", "reference"] = Field(
        "", description="written from scratch (''), edited from one of the item's replies ('candidate') or "
                        "from the agent's reply ('reference')")
    based_on_candidate_id: Id | None = Field(None, description="the reply it was edited from (based_on 'candidate')")


def redactor_for(request: Request):
    """(prompt, text) -> text with personal data replaced, as generated replies are before storage."""
    redaction = services(request).config.redaction

    def redact(prompt, text: str) -> str:
        from feedback_app.redact import ConversationRedactor

        redactor = ConversationRedactor(redaction)
        redactor.note_placeholders(json.dumps(prompt, ensure_ascii=False))  # reuse the prompt's numbering
        return redactor.redact(text)

    return redact if redaction.enabled else None


@router.post("/demonstrations", tags=["review"], status_code=201,
             summary="Save the reply you wanted for an item's prompt (a demonstration, pending review)")
def add_demonstration(body: DemonstrationIn, request: Request, actor: Actor = Depends(current_actor)):
    from feedback_app import demonstrations

    view = demonstrations.add(services(request).store, actor, body.item_id, body.text, body.based_on,
                              body.based_on_candidate_id, redact=redactor_for(request))
    return dataclasses.asdict(view)


@router.get("/demonstrations/context/{item_id}", tags=["review"],
            summary="An item handed to you: its replies in your order and the agent's reply, to start from")
def demonstration_context(item_id: Id, request: Request, actor: Actor = Depends(current_actor)):
    from feedback_app import demonstrations

    return demonstrations.context(services(request).store, actor, item_id)


@router.get("/demonstrations/mine", tags=["review"], summary="Your demonstrations, newest first")
def my_demonstrations(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      actor: Actor = Depends(current_actor)):
    from feedback_app import demonstrations

    views = demonstrations.listing(services(request).store, author=actor.username, limit=limit)
    return {"demonstrations": [dataclasses.asdict(v) for v in views]}


@router.get("/admin/demonstrations", tags=["admin"], summary="Reviewers' demonstrations, newest first")
def list_demonstrations(request: Request, status: Literal["pending", "accepted", "rejected"] | None = None,
                        author: Annotated[str | None, Query(max_length=100)] = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 500, actor: Actor = Depends(admin_actor)):
    from feedback_app import demonstrations

    store = services(request).store
    views = demonstrations.listing(store, status, author, limit)
    per_author = [dict(zip(("author", "pending", "accepted", "rejected"), row))
                  for row in demonstrations.counts_by_author(store)]
    return {"demonstrations": [dataclasses.asdict(v) for v in views], "by_author": per_author}


@router.post("/admin/demonstrations/{demonstration_id}/{decision}", tags=["admin"],
             summary="Accept or reject a demonstration (audit-logged)")
def decide(demonstration_id: Id, decision: Literal["accept", "reject"], request: Request,
           actor: Actor = Depends(admin_actor)):
    from feedback_app import demonstrations

    view = demonstrations.decide(services(request).store, actor, demonstration_id, decision == "accept")
    return dataclasses.asdict(view)
