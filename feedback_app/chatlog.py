"""Contact-centre chat logs in: one row per turn (CSV or JSONL) -> redacted prompts with the agent's reply.

A chat-log export has a row per turn: conversation id, turn order, speaker, text (and, optionally, a
customer identifier). The column names and the speaker values vary between contact-centre tools, so
they are given (``ChatLogFormat``, the ``rlhf app import --chat-log`` flags). Each customer turn with
the turns before it becomes a prompt (chat messages: customer = ``user``, agent = ``assistant``); the
agent's reply that followed is kept beside it as the reference reply. Consecutive turns of one
speaker are joined into one message (customers often send several short lines).

Everything is checked before anything is redacted or stored; a mistake is one ``UserError`` naming
the file, line and field. Redaction (``feedback_app.redact``) runs per conversation, so a value keeps
its placeholder across the turns of that conversation.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from feedback_app.redact import ConversationRedactor, RedactionReport, RedactionSettings
from feedback_app.store import ImportRow
from rlhf.errors import UserError
from rlhf.jsonl import jsonl_rows


class ChatLogFormat(BaseModel):
    """Where a chat-log export keeps each part of a turn, and how it names the two speakers."""

    conversation_column: str = Field("conversation_id", min_length=1, max_length=200,
                                     description="column of the conversation id")
    turn_column: str = Field("turn", min_length=1, max_length=200,
                             description="column of the turn's order within its conversation (integer)")
    speaker_column: str = Field("speaker", min_length=1, max_length=200, description="column naming who wrote the turn")
    text_column: str = Field("text", min_length=1, max_length=200, description="column of the turn's text")
    customer_column: str | None = Field(None, max_length=200, description="column of a customer identifier (stored "
                                                                          "only as a salted hash, for erasure on request)")
    customer_speaker: str = Field("customer", min_length=1, max_length=200,
                                  description="speaker value of the customer's turns")
    agent_speaker: str = Field("agent", min_length=1, max_length=200, description="speaker value of the agent's turns")


def chat_log_format(values: dict) -> ChatLogFormat:
    """``ChatLogFormat`` from flags or form fields (blank ones take their defaults; a blank customer column
    means none); a mistake is one ``UserError`` naming the field."""
    from pydantic import ValidationError

    given = {k: (v.strip() if isinstance(v, str) else v) for k, v in values.items() if v is not None}
    given = {k: v for k, v in given.items() if v != "" or k == "customer_column"}
    if given.get("customer_column") == "":
        given["customer_column"] = None
    unknown = sorted(set(given) - set(ChatLogFormat.model_fields))
    if unknown:
        raise UserError(f"{unknown[0]}: no such chat-log setting (settings: {', '.join(ChatLogFormat.model_fields)})")
    try:
        fmt = ChatLogFormat(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if fmt.customer_speaker == fmt.agent_speaker:
        raise UserError(f"agent_speaker: the same value as customer_speaker ({fmt.agent_speaker!r}); the two speakers "
                        f"must differ")
    return fmt


@dataclass
class Turn:
    order: int
    speaker: str  # "customer" | "agent"
    text: str
    where: str  # FILE:LINE


@dataclass
class Conversation:
    id: str
    customer: str
    where: str  # FILE:LINE of its first turn
    turns: list[Turn] = field(default_factory=list)


def is_chat_log(name: str, data: bytes, fmt: ChatLogFormat) -> bool:
    """True if the file's first row has the conversation and speaker columns (a per-turn export)."""
    text = data.decode("utf-8-sig", errors="replace")
    if name.lower().endswith(".csv"):
        header = next(csv.reader(io.StringIO(text)), [])
        return fmt.conversation_column in header and fmt.speaker_column in header
    for _, row in jsonl_rows(text.split("\n", 1)[0], name):
        return isinstance(row, dict) and fmt.conversation_column in row and fmt.speaker_column in row
    return False


def read_conversations(name: str, data: bytes, fmt: ChatLogFormat) -> list[Conversation]:
    """The conversations of a per-turn CSV or JSONL file, in file order, checked turn by turn."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{name}: not a UTF-8 text file") from None
    columns = [fmt.conversation_column, fmt.turn_column, fmt.speaker_column, fmt.text_column]
    if fmt.customer_column:
        columns.append(fmt.customer_column)
    if name.lower().endswith(".csv"):
        records = _csv_records(name, text, columns)
    else:
        records = _jsonl_records(name, text, columns)
    conversations: dict[str, Conversation] = {}
    seen: dict[tuple[str, int], str] = {}
    for where, record in records:
        conv_id = _cell(record, fmt.conversation_column, where)
        speaker_value = _cell(record, fmt.speaker_column, where)
        if speaker_value == fmt.customer_speaker:
            speaker = "customer"
        elif speaker_value == fmt.agent_speaker:
            speaker = "agent"
        else:
            raise UserError(f"{where}: {fmt.speaker_column}: {speaker_value!r} is neither the customer speaker "
                            f"{fmt.customer_speaker!r} nor the agent speaker {fmt.agent_speaker!r} "
                            f"(--customer-speaker/--agent-speaker)")
        raw_order = _cell(record, fmt.turn_column, where)
        try:
            order = int(raw_order)
        except ValueError:
            raise UserError(f"{where}: {fmt.turn_column}: {raw_order!r} is not a whole number") from None
        text_value = record.get(fmt.text_column)
        if not isinstance(text_value, str) or not text_value.strip():
            raise UserError(f"{where}: {fmt.text_column}: empty turn (every turn needs its text)")
        if "\x00" in text_value:
            raise UserError(f"{where}: {fmt.text_column}: holds a NUL byte (\\x00); remove it and import again")
        customer = _cell(record, fmt.customer_column, where) if fmt.customer_column else ""
        conv = conversations.get(conv_id)
        if conv is None:
            conv = conversations[conv_id] = Conversation(conv_id, customer, where)
        if (conv_id, order) in seen:
            raise UserError(f"{where}: {fmt.turn_column}: turn {order} of conversation {conv_id!r} is duplicated "
                            f"(first at {seen[(conv_id, order)]})")
        if conv.turns and order < conv.turns[-1].order:
            raise UserError(f"{where}: {fmt.turn_column}: turn {order} of conversation {conv_id!r} comes after turn "
                            f"{conv.turns[-1].order} ({conv.turns[-1].where}): turns must be in order")
        if customer and conv.customer and customer != conv.customer:
            raise UserError(f"{where}: {fmt.customer_column}: conversation {conv_id!r} belongs to another customer "
                            f"at {conv.where}")
        seen[(conv_id, order)] = where
        conv.turns.append(Turn(order, speaker, text_value, where))
    if not conversations:
        raise UserError(f"{name}: no turns found")
    for conv in conversations.values():
        if not any(t.speaker == "customer" for t in conv.turns):
            raise UserError(f"{conv.where}: {fmt.speaker_column}: conversation {conv.id!r} has no customer turn "
                            f"(nothing to make a prompt of)")
    return list(conversations.values())


def _cell(record: dict, column: str, where: str) -> str:
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: {column}: missing")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f"{where}: {column}: expected text or a number, got {type(value).__name__}")
    return str(value).strip()


def _csv_records(name: str, text: str, columns: list[str]):
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    for column in columns:
        if column not in header:
            raise UserError(f"{name}:1: {column}: no such column in the header (columns: {', '.join(header) or 'none'}"
                            f"; name the columns with --conversation-column, --turn-column, --speaker-column, "
                            f"--text-column)")
    out = []
    try:
        for record in reader:
            out.append((f"{name}:{reader.line_num}", record))
    except csv.Error as exc:
        raise UserError(f"{name}:{reader.line_num}: malformed CSV: {exc}") from None
    return out


def _jsonl_records(name: str, text: str, columns: list[str]):
    out = []
    for where, record in jsonl_rows(text, name):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected an object with the fields {', '.join(columns)}")
        for column in columns:
            if column not in record:
                raise UserError(f"{where}: {column}: no such field (fields: {', '.join(sorted(record)) or 'none'})")
        out.append((where, record))
    return out


def conversation_rows(conversations: list[Conversation], settings: RedactionSettings,
                      report: RedactionReport) -> list[ImportRow]:
    """Prompts with their reference replies, redacted per conversation."""
    rows = []
    for conv in conversations:
        redactor = ConversationRedactor(settings, report)
        messages: list[dict] = []
        sources: list[str] = []
        for turn in conv.turns:
            role = "user" if turn.speaker == "customer" else "assistant"
            text = redactor.redact(turn.text)
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": role, "content": text})
                sources.append(turn.where)
        for i, message in enumerate(messages):
            if message["role"] != "user":
                continue
            following = messages[i + 1]["content"] if i + 1 < len(messages) else None
            rows.append(ImportRow(prompt=[dict(m) for m in messages[:i + 1]], source=sources[i],
                                  reference=following, conversation=conv.id, customer=conv.customer))
    return rows


def redact_rows(rows: list[ImportRow], settings: RedactionSettings, report: RedactionReport) -> list[ImportRow]:
    """Prompt rows (text or ``messages``, with optional replies) redacted: each row is one conversation."""
    out = []
    for row in rows:
        redactor = ConversationRedactor(settings, report)
        if isinstance(row.prompt, str):
            prompt = redactor.redact(row.prompt)
        else:
            prompt = [{**m, "content": redactor.redact(m["content"])} for m in row.prompt]
        replies = [redactor.redact(r) for r in row.replies] if row.replies is not None else None
        reference = redactor.redact(row.reference) if row.reference is not None else None
        out.append(ImportRow(prompt=prompt, replies=replies, model=row.model, source=row.source, reference=reference,
                             conversation=row.conversation, customer=row.customer, gold_ranks=row.gold_ranks))
    return out


def import_bytes(name: str, data: bytes, settings: RedactionSettings, fmt: ChatLogFormat | None = None,
                 chat_log: bool = False) -> tuple[list[ImportRow], RedactionReport]:
    """An uploaded file's rows (chat log or prompts), redacted, with the report; nothing is stored."""
    from feedback_app.importing import parse_bytes

    fmt = fmt or ChatLogFormat()
    report = RedactionReport()
    if chat_log or is_chat_log(name, data, fmt):
        return conversation_rows(read_conversations(name, data, fmt), settings, report), report
    return redact_rows(parse_bytes(name, data), settings, report), report


def store_import(store, rows: list[ImportRow], report: RedactionReport, settings: RedactionSettings, source: str,
                 round: int = 0, by=None) -> dict:
    """Store redacted rows: the project's redaction settings (a change audited), the rows, and the
    redaction report in the audit log. The counts of ``Store.import_rows`` plus the report."""
    store.set_redaction(settings.model_dump(), by=by)
    counts = store.import_rows(rows, round=round, by=by)
    store.audit(by, "redaction report", source, report.as_dict())
    return {**counts, "redaction": report.as_dict() if settings.enabled else None}


def project_settings(store) -> RedactionSettings:
    """The redaction settings stored with the project (defaults when none were recorded yet)."""
    return RedactionSettings.model_validate(store.refresh_project().redaction or {})


def import_file(path, fmt: ChatLogFormat, settings: RedactionSettings, chat_log: bool = False
                ) -> tuple[list[ImportRow], RedactionReport]:
    """Rows of a chat log or a prompt file, redacted, with the report; nothing is stored here."""
    from pathlib import Path

    from feedback_app.importing import read_import_file

    report = RedactionReport()
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl", ".json", ".txt"):
        data = path.read_bytes()
        if chat_log or is_chat_log(str(path), data, fmt):
            return conversation_rows(read_conversations(str(path), data, fmt), settings, report), report
    return redact_rows(read_import_file(path), settings, report), report
