"""Redaction recall and precision on contact-centre chat turns generated with Faker.

Each conversation is written from templates in one of seven Faker locales (en_US, en_GB, de_DE,
fr_FR, es_ES, it_IT, nl_NL): the customer's and the agent's names (first name alone, full name,
with a title, lower-case after "my name is"), emails, phone numbers in the locale's own formats,
card numbers (plain, grouped by spaces or dashes), street addresses and order numbers, beside text
that is NOT personal data (cities, weekdays, months, dates, amounts, product names). Every planted
value's span is known, so:

  * recall per type: planted values whose every character ended up inside a redacted span;
  * precision: redacted spans that overlap a planted value, over all redacted spans.

Goals (issue 15): recall >= 0.99 for emails, phone numbers and card numbers, >= 0.90 for names,
precision >= 0.90. The detector was developed on seeds 1 to 9 (``--seed``); the default seed was
run only to report. The sample shipped under docs/ was written by hand and is not part of this set.

    .venv/bin/python bench/redaction_bench.py                # 400 conversations, the reported seed
    .venv/bin/python bench/redaction_bench.py --conversations 50 --seed 3 --show-misses 20
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
ORDER_PATTERN = r"\bORD-\d{6}\b"
PRODUCTS = ["Kettle Pro 2", "Nimbus Router", "Aurora desk lamp", "Atlas backpack", "Vega blender", "Orion X headset"]

# {slot} = planted personal data; [slot] = ordinary text (not personal data)
CUSTOMER = [
    "Hi, my name is {full_name} and my order {order} has not arrived.",
    "Hello, this is {first_name}. I ordered the [product] on [weekday] and it still shows pending.",
    "my name is {lower_name}, can you check order {order}?",
    "You can reach me on {phone} or at {email}.",
    "My email is {email} and my phone number is {phone}.",
    "Please call me back at {phone} after [time].",
    "The card I used ends in... actually here is the full number {card}, expiry [month].",
    "I paid with {card} on [date], total [amount].",
    "Ship it to {address} please, I moved to [city] in [month].",
    "My address is {address}, [city].",
    "It is under the name [title] {last_name}.",
    "I already spoke with {agent_first} yesterday about {order}.",
    "Thanks {agent_first}, that helps a lot.",
    "Can you send the invoice to {email}? The account is in the name of {full_name}.",
    "{full_name} here again, the [product] broke after [number] days.",
    "My husband {other_name} placed the order, his number is {phone}.",
    "Regards,\n{full_name}",
    "I live in [city], is there a store near me?",
    "The [product] arrived on [date] but the box was damaged.",
]
AGENT = [
    "Hi {first_name}, thanks for contacting us. I'm {agent_first} and I will help you today.",
    "Thank you {first_name}. I can see order {order}; it left our warehouse on [weekday].",
    "Hello [title] {last_name}, I have updated the phone number on file to {phone}.",
    "I have sent a confirmation to {email}.",
    "The refund of [amount] will reach the card ending in your statement within [number] days.",
    "Our store in [city] is open from [time] on [weekday].",
    "Kind regards,\n{agent_first}",
    "Best,\n{agent_full}\nCustomer Support",
    "Could you confirm the delivery address, {first_name}? We have {address} on file.",
    "I understand, {first_name}. The [product] is covered by the warranty until [month].",
]
PERSON_SLOTS = {"full_name", "first_name", "last_name", "lower_name", "title_name", "agent_first", "agent_full", "other_name"}
LABEL_OF = {"email": "EMAIL", "phone": "PHONE", "card": "CARD", "address": "ADDRESS", "order": "ORDER_ID"}


def card_number(fake, rng: random.Random) -> str:
    digits = fake.credit_card_number()
    style = rng.random()
    if style < 0.4 and len(digits) == 16:
        return " ".join(digits[i:i + 4] for i in range(0, 16, 4))
    if style < 0.6 and len(digits) == 16:
        return "-".join(digits[i:i + 4] for i in range(0, 16, 4))
    return digits


def conversation(rng: random.Random, locale: str, seed: int):
    """(turns, planted): turns as texts, planted as (turn index, start, end, label, value)."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    first, last = fake.first_name(), fake.last_name()
    agent_first, agent_last = fake.first_name(), fake.last_name()
    slots = {
        "full_name": f"{first} {last}",
        "first_name": first,
        "last_name": last,
        "lower_name": f"{first} {last}".lower(),
        "agent_first": agent_first,
        "agent_full": f"{agent_first} {agent_last}",
        # first and last name only: a title ("Mrs", "Dott.") is not personal data and stays (tested apart)
        "other_name": f"{fake.first_name()} {fake.last_name()}",
        "email": fake.email() if rng.random() < 0.5 else f"{first}.{last}@{fake.free_email_domain()}".lower()
        .replace(" ", ""),
        "phone": fake.phone_number(),
        "card": card_number(fake, rng),
        "address": fake.street_address().replace("\n", ", "),
        "order": f"ORD-{rng.randint(0, 999999):06d}",
    }
    filler = {
        "product": lambda: rng.choice(PRODUCTS), "weekday": fake.day_of_week, "month": fake.month_name,
        "city": fake.city, "date": lambda: fake.date(), "time": lambda: fake.time("%H:%M"),
        "amount": lambda: f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d} EUR",
        "number": lambda: str(rng.randint(2, 30)),
        "title": lambda: (fake.prefix() if hasattr(fake, "prefix") else "") or "Mx.",
    }
    templates = rng.sample(CUSTOMER, 5) + rng.sample(AGENT, 4)
    rng.shuffle(templates)
    turns, planted = [], []
    for index, template in enumerate(templates):
        text = ""
        i = 0
        while i < len(template):
            ch = template[i]
            if ch in "{[":
                close = template.index("}" if ch == "{" else "]", i)
                slot = template[i + 1:close]
                value = slots[slot] if ch == "{" else filler[slot]()
                if ch == "{":
                    label = "PERSON" if slot in PERSON_SLOTS else LABEL_OF[slot]
                    planted.append((index, len(text), len(text) + len(value), label, value))
                text += value
                i = close + 1
            else:
                text += ch
                i += 1
        turns.append(text)
    return turns, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--show-misses", type=int, default=0, help="print this many misses and false positives")
    args = parser.parse_args()

    from feedback_app.redact import RedactionSettings, detect

    settings = RedactionSettings(patterns={"ORDER_ID": ORDER_PATTERN})
    rng = random.Random(args.seed)
    planted_n, recalled = Counter(), Counter()
    detected_n = true_detected = 0
    misses, false_positives = [], []
    started = time.perf_counter()
    turns_n = 0
    for c in range(args.conversations):
        locale = LOCALES[c % len(LOCALES)]
        turns, planted = conversation(rng, locale, args.seed * 100003 + c)
        for index, text in enumerate(turns):
            turns_n += 1
            found = [(r.start, r.end, r.entity_type) for r in detect(text, settings)]
            covered = set()
            for s, e, _ in found:
                covered.update(range(s, e))
            mine = [p for p in planted if p[0] == index]
            for _, s, e, label, value in mine:
                planted_n[label] += 1
                if all(k in covered for k in range(s, e) if not text[k].isspace()):
                    recalled[label] += 1
                else:
                    misses.append((locale, label, value, text))
            for s, e, entity in found:
                detected_n += 1
                if any(s < pe and ps < e for _, ps, pe, _, _ in mine):
                    true_detected += 1
                else:
                    false_positives.append((locale, entity, text[s:e], text))
    seconds = time.perf_counter() - started

    print(f"redaction bench: {args.conversations} conversations, {turns_n} turns, locales {', '.join(LOCALES)}, "
          f"seed {args.seed}, {seconds:.1f} s ({1000 * seconds / turns_n:.1f} ms per turn)")
    goals = {"EMAIL": 0.99, "PHONE": 0.99, "CARD": 0.99, "PERSON": 0.90}
    print(f"{'type':<10}{'planted':>9}{'recall':>9}  goal")
    for label in ["EMAIL", "PHONE", "CARD", "PERSON", "ADDRESS", "ORDER_ID"]:
        recall = recalled[label] / planted_n[label] if planted_n[label] else float("nan")
        goal = goals.get(label)
        mark = "" if goal is None else (f">= {goal:.2f} {'met' if recall >= goal else 'MISSED'}")
        print(f"{label:<10}{planted_n[label]:>9}{recall:>9.3f}  {mark}")
    precision = true_detected / detected_n if detected_n else float("nan")
    print(f"precision {precision:.3f} over {detected_n} redacted spans  >= 0.90 "
          f"{'met' if precision >= 0.90 else 'MISSED'}")
    for locale, label, value, text in misses[:args.show_misses]:
        print(f"MISS {locale} {label} {value!r} in {text!r}")
    for locale, entity, value, text in false_positives[:args.show_misses]:
        print(f"FALSE {locale} {entity} {value!r} in {text!r}")
    print(f"reproduce: .venv/bin/python bench/redaction_bench.py --conversations {args.conversations} "
          f"--seed {args.seed}")


if __name__ == "__main__":
    main()
