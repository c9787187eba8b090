"""The two offline workloads of shared/MACHINE.md, so numbers compare with the peers' table."""

from __future__ import annotations

SENTENCE = (
    "The history of science shows that careful measurement and honest reporting move knowledge forward "
    "faster than any single brilliant idea."
)

TOPICS = [
    "volcanoes", "the printing press", "honeybees", "tidal energy", "the Roman roads", "jazz", "glaciers",
    "bread baking", "the immune system", "lighthouses", "chess openings", "coral reefs", "the telegraph",
    "desert plants", "solar eclipses", "paper making",
]


def workload_a(num_prompts: int = 32) -> list[str]:
    """Raw prompts of 31 to 94 tokens."""
    return [
        f"Write a detailed essay about topic number {i}: " + " ".join([SENTENCE] * (i % 4 + 1))
        for i in range(num_prompts)
    ]


def workload_b(num_prompts: int = 32) -> list[list[dict[str, str]]]:
    """Chat conversations of roughly 50 to 300 tokens once templated."""
    conversations = []
    for i in range(num_prompts):
        topic = TOPICS[i % len(TOPICS)]
        context = " ".join([SENTENCE] * (i % 8))
        conversations.append(
            [{"role": "user", "content": f"{context} Please explain {topic} to a curious student, in depth."}]
        )
    return conversations
