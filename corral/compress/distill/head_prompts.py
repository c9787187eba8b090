"""Built-in chat prompts for a draft head's training samples (``corral distill --draft-head-for`` without
``--teacher-prompts``): a few hundred user messages, tasks crossed with subjects, so the target's replies span
the kinds of text a chat model writes (stories, explanations, lists, emails, code, summaries, comparisons).

The story topics of ``bench/spec_decode.py`` (a dragon who learns to paint, a lighthouse keeper and a lost
whale, ...) are its held-out workload: none of their subjects appears here, so the benchmark measures the
head on text it was not trained on.
"""

from __future__ import annotations

import random

_CHARACTERS = (
    "a fox", "an old sailor", "a little girl", "a talking cat", "a forgotten toy", "a young wizard",
    "a lonely astronaut", "a brave knight", "a shy ghost", "a curious owl", "a retired detective", "a tiny snail",
    "a street musician", "a family of mice", "a pirate captain", "a kind giant", "a lost puppy",
    "a village doctor", "a snowman", "an inventor", "a mermaid", "a farmer", "a bookshop owner",
    "a runaway balloon", "a grumpy neighbour", "a chess champion", "a baby elephant", "a beekeeper",
)
_PLACES = ("in a city of glass", "on a stormy island", "in a quiet forest", "under the sea", "in the desert",
           "in a haunted castle", "at a busy market", "on a frozen lake", "in an old library", "during a festival")
_STORY_FRAMES = ("Write a short story about {c} {p}.", "Tell me a bedtime story about {c} {p}.",
                 "Write a poem about {c} {p}.")

_CONCEPTS = (
    "photosynthesis", "compound interest", "the water cycle", "how vaccines work", "recursion in programming",
    "supply and demand", "black holes", "the immune system", "inflation", "plate tectonics", "electricity",
    "the stock market", "DNA", "climate change", "public-key encryption", "how the internet works", "gravity",
    "natural selection", "neural networks", "the French Revolution", "the placebo effect", "volcanoes",
)
_CONCEPT_FRAMES = ("Explain {x} in simple terms.", "How does {x} work? Give an example.",
                   "Explain {x} to a ten-year-old.")

_GOALS = (
    "staying focused while studying", "saving money on groceries", "a healthy breakfast", "learning a new language",
    "sleeping better", "a first job interview", "a weekend in a new city", "a birthday party on a budget",
    "keeping houseplants alive", "running a first 5k", "writing clean code", "reducing stress at work",
    "a productive team meeting", "cooking for one", "a long road trip", "starting a podcast",
)
_LIST_FRAMES = ("List {n} tips for {x}.", "Give me {n} ideas for {x}, one line each.")

_EMAILS = (
    ("my manager", "asking for a day off next Friday"), ("a client", "a delayed delivery"),
    ("my landlord", "a broken heater"), ("a colleague", "moving our meeting to Thursday"),
    ("my teacher", "an extension for an essay"), ("a customer", "a refund they asked for"),
    ("a hiring manager", "following up after an interview"), ("my team", "a new holiday schedule"),
    ("a supplier", "an invoice that was charged twice"), ("a friend", "thanking them for their help"),
    ("a neighbour", "noise late at night"), ("the city council", "a pothole on my street"),
)
_EMAIL_FRAMES = ("Write an email to {to} about {about}.", "Write a short, polite email to {to} about {about}.")

_CODE_TASKS = (
    "reverses a string", "checks whether a number is prime", "counts the words in a text",
    "merges two sorted lists", "finds the duplicates in a list", "computes the factorial of n",
    "converts Celsius to Fahrenheit", "reads a CSV file and prints its first rows", "flattens a nested list",
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number", "removes blank lines from a file",
)
_CODE_FRAMES = ("Write a Python function that {x}.", "Write a JavaScript function that {x}.",
                "Write a Python function that {x}, with a docstring and an example.")

_SUMMARY_SUBJECTS = (
    "the plot of Romeo and Juliet", "the causes of the First World War", "the life of Marie Curie",
    "the history of the printing press", "the main ideas of stoicism", "the story of the Apollo 11 mission",
    "the plot of Pride and Prejudice", "the rise of the Roman Empire", "the history of the bicycle",
    "the discovery of penicillin", "the Industrial Revolution", "the plot of The Odyssey",
)
_SUMMARY_FRAMES = ("Summarize {x} in three sentences.", "Give me a short summary of {x}.")

_CHOICES = (
    "working from home", "electric cars", "learning to code as an adult", "living in a big city",
    "renting or buying a home", "public transport", "reading e-books", "a four-day work week",
    "social media for teenagers", "studying abroad",
)
_CHOICE_FRAMES = ("What are the pros and cons of {x}?", "Write a short paragraph arguing for {x}.")


def builtin_user_messages() -> list[str]:
    """The built-in user messages, in a fixed shuffled order (the same on every call)."""
    # each character in two of the places (a different pair for consecutive characters)
    messages = [f.format(c=c, p=p) for f in _STORY_FRAMES for i, c in enumerate(_CHARACTERS)
                for p in _PLACES[i % 5::5]]
    messages += [f.format(x=x) for f in _CONCEPT_FRAMES for x in _CONCEPTS]
    messages += [f.format(n=n, x=x) for f in _LIST_FRAMES for n, x in zip((5, 7, 10) * 6, _GOALS)]
    messages += [f.format(to=to, about=about) for f in _EMAIL_FRAMES for to, about in _EMAILS]
    messages += [f.format(x=x) for f in _CODE_FRAMES for x in _CODE_TASKS]
    messages += [f.format(x=x) for f in _SUMMARY_FRAMES for x in _SUMMARY_SUBJECTS]
    messages += [f.format(x=x) for f in _CHOICE_FRAMES for x in _CHOICES]
    random.Random(0).shuffle(messages)
    return messages
