"""feedback_app/redact.py: Presidio offline (blank spaCy engine), names from package lists, typed
placeholders numbered per conversation. Texts and expected outputs written by hand."""

from __future__ import annotations

import pytest

from feedback_app.redact import (RedactionReport, RedactionSettings, find_names, phone_spans, redact_texts,
                                 settings_from)
from rlhf.errors import UserError

SETTINGS = RedactionSettings(patterns={"ORDER_ID": r"\bORD-\d{6}\b"})


def names_in(text: str) -> list[str]:
    return [text[s:e] for s, e, _ in find_names(text)]


def test_names_from_lists_cues_and_titles():
    assert names_in("Hi, I'm John Smith, can you help?") == ["John Smith"]
    assert names_in("Thanks Anna, bye") == ["Anna"]                     # greeting cut off
    assert names_in("Regards,\nXavier Quonk") == ["Xavier Quonk"]       # unlisted, after a sign-off
    assert names_in("my name is anna berg, order late") == ["anna berg"]  # lower case after a strong cue
    assert names_in("Hello Mrs. Okonkwo, your parcel") == ["Okonkwo"]   # the title is kept
    assert names_in("Hi, my name is Jelle van den Assem and") == ["Jelle van den Assem"]
    assert names_in("My husband Georges Pottier placed it") == ["Georges Pottier"]


def test_no_names_in_things_places_and_dates():
    assert names_in("The Aurora desk lamp arrived on Monday in June.") == []
    assert names_in("Our store in Port Mary is open on Freitag.") == []
    assert names_in("I ordered the Vega blender; the ORDER is late. Please help.") == []


def test_phone_shapes_without_dates():
    text = "call 001-486-576-1272x22940 or (0306)9990480, not on 2024-03-15"
    assert [text[s:e] for s, e in phone_spans(text)] == ["001-486-576-1272x22940", "(0306)9990480"]


def test_conversation_placeholders_are_typed_and_consistent():
    report = RedactionReport()
    turns = redact_texts([
        "Hi, I'm John Smith, my email is john.smith@example.co.uk and order ORD-123456.",
        "Card 4111 1111 1111 1111, phone +44 20 7946 0958, IBAN DE89370400440532013000.",
        "Please write to JOHN.SMITH@example.co.uk or jane@example.org about ORD-123456.",
    ], SETTINGS, report)
    assert turns == [
        "Hi, I'm <PERSON_1>, my email is <EMAIL_1> and order <ORDER_ID_1>.",
        "Card <CARD_1>, phone <PHONE_1>, IBAN <IBAN_1>.",
        "Please write to <EMAIL_1> or <EMAIL_2> about <ORDER_ID_1>.",
    ]
    assert report.counts == {"PERSON": 1, "EMAIL": 3, "ORDER_ID": 2, "CARD": 1, "PHONE": 1, "IBAN": 1}
    assert report.texts == 3 and report.samples[0] == turns[0]


def test_redacting_redacted_text_changes_nothing_and_numbers_continue():
    once = redact_texts(["Mail <EMAIL_1> or bob@example.com"], SETTINGS)
    assert once == ["Mail <EMAIL_1> or <EMAIL_2>"]
    assert redact_texts(once, SETTINGS) == once


def test_redaction_off_keeps_text():
    text = "I'm John Smith, john@example.com"
    assert redact_texts([text], RedactionSettings(enabled=False)) == [text]


def test_invalid_pattern_is_one_line_naming_the_field():
    with pytest.raises(UserError, match=r"^configs/app/x.yaml: redaction.patterns.ORDER_ID: not a valid regular "
                                        r"expression"):
        settings_from({"patterns": {"ORDER_ID": "ORD-(\\d+"}}, "configs/app/x.yaml")
    with pytest.raises(UserError, match=r"redaction.patterns.order: a label is upper-case"):
        settings_from({"patterns": {"order": "x"}}, "f.yaml")


def test_candidates_number_after_the_prompts_placeholders():
    from feedback_app.redact import ConversationRedactor

    redactor = ConversationRedactor(SETTINGS)
    redactor.note_placeholders('[{"role": "user", "content": "I am <PERSON_1>, mail <EMAIL_1>"}]')
    assert redactor.redact("Dear <PERSON_1>, write to help@example.com") == "Dear <PERSON_1>, write to <EMAIL_2>"
