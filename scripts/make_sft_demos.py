"""Write configs/sft/contact_centre_demos.jsonl: synthetic contact-centre demonstrations for `rlhf sft`.

Every row is written for this project: no real customer, agent or order. Personal values appear as the
typed placeholders the chat-log import leaves after redaction (<PERSON_1>, <ORDER_ID_1>, <EMAIL_1>), so the
demonstrations look like what the store holds after `rlhf app import`. Each topic has several customer
phrasings (plain questions in the style of configs/prompts, and short conversations in the style of
configs/chatlogs) answered in one house style: acknowledge, apologise when something went wrong, give the
concrete next steps, say what happens next, no invented promises.

    python scripts/make_sft_demos.py            # rewrites the file (deterministic)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "configs" / "sft" / "contact_centre_demos.jsonl"

# topic -> (customer phrasings, the reply in house style, an optional earlier exchange for a conversation)
TOPICS = {
    "missing_delivery": (
        ["My package says delivered but I never received it. What should I do?",
         "Tracking shows delivered yesterday but there is nothing at my door.",
         "Hi, order <ORDER_ID_1> is marked delivered and I don't have it."],
        "I'm sorry your parcel hasn't reached you. Please check with neighbours and around your building, as "
        "couriers sometimes leave parcels in a safe place. If it still hasn't turned up in 24 hours, reply with "
        "your order number and I'll open a courier investigation and send a replacement or a full refund.",
    ),
    "password_reset": (
        ["How do I reset my account password?",
         "I forgot my password and can't log in.",
         "The password reset email never arrives. Help?"],
        "You can reset it from the sign-in page: choose 'Forgot password', enter the email on your account and "
        "follow the link we send (it is valid for one hour). If the email doesn't arrive within ten minutes, "
        "check your spam folder; if it's not there, reply here and I'll send the link manually.",
    ),
    "change_address": (
        ["Can I change the shipping address after placing an order?",
         "I typed the wrong address on my order, can you fix it?",
         "Please send order <ORDER_ID_1> to my new address instead."],
        "Yes, as long as the order hasn't been dispatched. Reply with your order number and the full new "
        "address and I'll update it straight away. If it has already left our warehouse, I'll ask the courier "
        "to redirect it and let you know if that works.",
    ),
    "double_charge": (
        ["I was charged twice for the same order. Can you help?",
         "There are two payments on my card for one order.",
         "You took the money twice for order <ORDER_ID_1>!"],
        "I'm sorry about the double charge. Please send me the order number and the date of both payments. "
        "If one of them is a pending authorisation it will drop off by itself within 3 working days; if both "
        "went through, I'll refund the duplicate today and you'll see it in 3 to 5 working days.",
    ),
    "refund_time": (
        ["How long does a refund take to arrive?",
         "I returned my item last week, when do I get my money back?",
         "Still waiting for my refund, how long does it usually take?"],
        "Once the return reaches our warehouse we process the refund within 2 working days, and your bank "
        "usually shows it 3 to 5 working days after that. You get an email when we issue it. If it has been "
        "longer, send me your order number and I'll check where it is.",
    ),
    "damaged_item": (
        ["The item I received is damaged. What are my options?",
         "My order arrived broken.",
         "The box was crushed and the lamp inside is cracked."],
        "I'm sorry it arrived damaged. Please reply with your order number and a photo of the item and the "
        "packaging. You can choose a free replacement or a full refund, and you don't need to send the "
        "damaged item back.",
    ),
    "cancel_subscription": (
        ["Can I cancel my subscription at any time?",
         "How do I stop my monthly subscription?",
         "I want to cancel my plan before the next payment."],
        "Yes, you can cancel at any time with no fee. Go to Account > Subscription and choose 'Cancel plan'; "
        "you keep access until the end of the period you've paid for and won't be charged again. If you'd "
        "like, I can cancel it for you now.",
    ),
    "card_declined": (
        ["Why was my card declined at checkout?",
         "My payment keeps failing.",
         "Checkout says payment declined but my card works everywhere else."],
        "Sorry for the trouble at checkout. The most common causes are a billing address that doesn't match "
        "the card, an expired card, or the bank blocking an online payment. Please check those details and "
        "try again; if it still fails, your bank can tell you why, or you can pay by PayPal instead.",
    ),
    "update_billing": (
        ["How do I update my billing information?",
         "I have a new card, where do I change it?",
         "How can I change the card on my account?"],
        "Go to Account > Payment methods, choose 'Add card', then set the new card as default and remove the "
        "old one. The change applies to your next payment. We never ask for card details by email or chat, "
        "so please don't send them here.",
    ),
    "international_shipping": (
        ["Do you ship internationally?",
         "Can you deliver to Canada?",
         "Do you send orders outside the EU?"],
        "We ship to most countries in Europe, North America and Oceania. Delivery costs and times are shown "
        "at checkout once you enter your address; import duties may apply outside the EU. Tell me the country "
        "and I'll confirm the options.",
    ),
    "discount_code": (
        ["My discount code is not working. Why?",
         "The promo code says invalid.",
         "I entered the code from your email and it won't apply."],
        "Sorry about that. Codes usually fail because they have expired, have a minimum order value, or "
        "exclude sale items. Please reply with the code and what's in your basket and I'll check it; if it "
        "should have worked, I'll apply the discount for you.",
    ),
    "track_order": (
        ["How can I track my order?",
         "Where is my order?",
         "Is there a tracking number for order <ORDER_ID_1>?"],
        "You'll find the tracking link in your dispatch email and under Account > Orders. Tracking can take "
        "up to 24 hours to update after dispatch. If you can't find it, reply with your order number and I'll "
        "send you the link.",
    ),
    "exchange_size": (
        ["I received the wrong size. How do I exchange it?",
         "The shoes are too small, can I swap them?",
         "Can I exchange a jacket for a bigger size?"],
        "Of course. Go to Account > Orders, choose 'Return or exchange', select the size you need and print "
        "the free return label. We send the new size as soon as the courier scans your parcel, so you don't "
        "wait for the return to arrive.",
    ),
    "human_agent": (
        ["Can I speak to a human agent?",
         "I want to talk to a real person.",
         "Is there a phone number I can call?"],
        "You're talking to our support team now, and I'm happy to help. If you'd rather talk on the phone, "
        "tell me a good time and the number to call and we'll ring you back during opening hours, Monday to "
        "Friday, 8:00 to 18:00.",
    ),
    "delete_account": (
        ["How do I delete my account?",
         "Please remove all my data and close my account.",
         "I want to close my account."],
        "I can help with that. Go to Account > Privacy and choose 'Delete account'; we confirm by email and "
        "erase your personal data within 30 days, except what we must keep for tax records. Open orders "
        "must be completed first. If you prefer, reply here and I'll start it for you.",
    ),
    "app_crash": (
        ["The app keeps crashing when I open it. What can I do?",
         "Your app closes as soon as I log in.",
         "The app freezes on the start screen."],
        "Sorry the app is crashing. Please update it to the latest version, restart your phone and try "
        "again. If it still crashes, uninstall and reinstall it (your orders are saved in your account). "
        "Let me know your phone model and system version if the problem continues, so our developers can "
        "look at it.",
    ),
    "data_sharing": (
        ["Is my personal data shared with third parties?",
         "Do you sell my information?",
         "Who can see my address and phone number?"],
        "We never sell your data. We share only what's needed to deliver your order and take payment, with "
        "our courier and payment provider, who may not use it for anything else. The full list is in our "
        "privacy policy, and you can ask for a copy of your data at any time.",
    ),
    "change_email": (
        ["How do I change the email address on my account?",
         "I have a new email, can you update my account?",
         "How can I log in with a different email?"],
        "Go to Account > Profile, choose 'Change email', enter the new address and confirm the link we send "
        "to it. Until you confirm, we keep using the old address. If you no longer have access to the old "
        "email, reply here and I'll verify your identity another way.",
    ),
    "return_no_packaging": (
        ["Can I return an item without the original packaging?",
         "I threw away the box, can I still return it?",
         "Do I need the original box to send something back?"],
        "Yes, you can. Please pack the item securely in any sturdy box so it isn't damaged on the way, and "
        "use the return label from Account > Orders. Items must be unused and returned within 30 days of "
        "delivery.",
    ),
    "order_processing": (
        ["My order has been processing for a week. Is something wrong?",
         "Why hasn't my order shipped yet?",
         "Order <ORDER_ID_1> still says processing after a week."],
        "I'm sorry for the wait. Please reply with your order number so I can check it. Usually a delay "
        "means an item is back-ordered or the payment needs checking; I'll tell you which, give you a "
        "dispatch date, and if you'd rather not wait I can cancel it with a full refund.",
    ),
    "student_discount": (
        ["Do you offer student discounts?",
         "Is there a discount for students?",
         "I'm at university, can I get a cheaper price?"],
        "Yes: students get 10% off full-price items. Verify your student status once under Account > "
        "Discounts and the discount applies automatically at checkout for a year. It can't be combined with "
        "other codes.",
    ),
    "two_factor": (
        ["How do I enable two-factor authentication?",
         "How can I make my account more secure?",
         "Can I turn on 2FA?"],
        "Good idea. Go to Account > Security, choose 'Two-factor authentication' and scan the QR code with an "
        "authenticator app, then enter the six-digit code to confirm. Keep the backup codes somewhere safe in "
        "case you lose your phone.",
    ),
    "combine_orders": (
        ["Can I combine two orders into one shipment?",
         "I placed two orders by mistake, can you send them together?",
         "Please ship my two orders in one box."],
        "I can try if neither order has been dispatched yet. Reply with both order numbers and I'll ask the "
        "warehouse to pack them together; if we save on delivery, I'll refund the second shipping charge.",
    ),
    "payment_methods": (
        ["What payment methods do you accept?",
         "Can I pay with PayPal?",
         "Do you take Apple Pay?"],
        "We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay. In some countries you "
        "can also pay by bank transfer or in instalments; the options for your address are shown at checkout.",
    ),
    "late_delivery": (
        ["My delivery is late.",
         "The parcel was due yesterday and hasn't come.",
         "Order <ORDER_ID_1> was supposed to arrive on Monday."],
        "I'm sorry it's late. Couriers usually deliver within one working day of the estimated date. Reply "
        "with your order number and I'll check the tracking; if it's stuck, I'll chase the courier and, if "
        "needed, send a replacement.",
    ),
    "wrong_item": (
        ["I received the wrong item.",
         "You sent me someone else's order.",
         "The box contains a different product than I ordered."],
        "I'm sorry we sent the wrong item. Please reply with your order number and a photo of what arrived. "
        "I'll send the right item today and email you a free return label for the wrong one.",
    ),
    "invoice": (
        ["How do I get an invoice for my order?",
         "I need a VAT invoice for my company.",
         "Can you send me a receipt?"],
        "You can download the invoice from Account > Orders > 'Invoice'. If you need your company name or "
        "VAT number on it, reply with those details and the order number and I'll send a corrected invoice "
        "by email.",
    ),
    "price_drop": (
        ["The price dropped a day after I bought it. Can I get the difference?",
         "It's cheaper now than when I ordered, can you refund the difference?",
         "I paid full price and it went on sale the next day."],
        "We refund the difference if the price drops within 7 days of your order. Reply with your order "
        "number and I'll check the current price and refund the difference to your original payment method.",
    ),
    "warranty": (
        ["My headphones stopped working after three months.",
         "Is my device still under warranty?",
         "The charger broke, is it covered?"],
        "I'm sorry it stopped working. Everything we sell has a two-year warranty. Reply with your order "
        "number and a short description of the fault, and I'll arrange a repair or replacement with a free "
        "return label.",
    ),
    "newsletter": (
        ["How do I unsubscribe from your emails?",
         "Stop sending me marketing emails.",
         "I get too many newsletters from you."],
        "Sorry for the clutter. Use the 'Unsubscribe' link at the bottom of any of our emails, or turn off "
        "marketing emails under Account > Notifications. It takes effect within 48 hours; you'll still get "
        "emails about your orders.",
    ),
}

# Short conversations in the style of the chat logs (placeholders as the import leaves them).
OPENERS = ["Hi, this is <PERSON_1>.", "Hello, my name is <PERSON_1>.", "Good morning.", "Hi there."]
GREETINGS = ["Hello <PERSON_1>, thanks for getting in touch. How can I help?",
             "Hi <PERSON_1>, I'm <PERSON_2> from the support team. What can I do for you?",
             "Hello, thanks for contacting us. How can I help today?"]


def rows(seed: int = 20261129) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for topic, (phrasings, reply) in TOPICS.items():
        for i, question in enumerate(phrasings):
            out.append({"prompt": question, "completion": reply, "source": "demonstration",
                        "author": "synthetic", "topic": topic})
            if i == 0:  # the same question inside a short conversation
                out.append({"prompt": [{"role": "user", "content": rng.choice(OPENERS)},
                                       {"role": "assistant", "content": rng.choice(GREETINGS)},
                                       {"role": "user", "content": question}],
                            "completion": reply, "source": "demonstration", "author": "synthetic", "topic": topic})
    return out


def main() -> None:
    data = rows()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    print(f"wrote {len(data)} demonstrations ({len(TOPICS)} topics) to {OUT}")


if __name__ == "__main__":
    main()
