"""Time the reply splitter and the inbound trim on text with nowhere natural to cut.

Run by hand: `python bench/bench_split.py`. Each line is the best of five runs, in milliseconds:
the split as sent to WhatsApp (capped at MAX_REPLY_PARTS), the uncapped split (`flask chat`), and
`clean_text` of 32,000 characters trimmed to MAX_INBOUND_CHARS.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatbot.sanitizer import clean_text  # noqa: E402
from chatbot.whatsapp import split_message  # noqa: E402
from config import Config  # noqa: E402

INPUTS = {
    "thumbs and joiners x10k": "\U0001F44D\u200D" * 10_000,
    "one joiner chain of 20k": "\U0001F44D" + "\u200D" * 20_000,
    "20k combining marks": "a" + "\u0301" * 20_000,
    "20k mixed combining marks": "a" + "\u0301\u0323" * 10_000,
    "20k letters, no spaces": "x" * 20_000,
    "a word, then no spaces": "Hi " + "y" * 20_000,
    "flag run x10k": "\U0001F1F3\U0001F1F1" * 10_000,
    "prose, 20k": ("The quick brown fox jumps over the lazy dog. " * 450)[:20_000],
}
INBOUND_CHARS = 32_000
RUNS = 5


def best_ms(action) -> tuple[float, object]:
    """Run `action` RUNS times; return the fastest time in ms and the last result."""
    fastest = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        result = action()
        fastest = min(fastest, (time.perf_counter() - started) * 1000)
    return fastest, result


def main() -> None:
    max_parts, max_chars = Config.max_reply_parts, Config.max_inbound_chars
    print(f"{'input':28} {'capped split':>20} {'uncapped split':>22} {'clean_text 32k':>16}")
    for name, text in INPUTS.items():
        capped_ms, capped = best_ms(lambda text=text: split_message(text, max_parts=max_parts))
        whole_ms, whole = best_ms(lambda text=text: split_message(text))
        inbound = (text * (INBOUND_CHARS // len(text) + 1))[:INBOUND_CHARS]
        clean_ms, cleaned = best_ms(lambda inbound=inbound: clean_text(inbound, max_chars))
        print(f"{name:28} {capped_ms:8.1f} ms {len(capped):4} parts {whole_ms:8.1f} ms {len(whole):6} parts "
              f"{clean_ms:8.1f} ms ({len(cleaned.text)} kept)")


if __name__ == "__main__":
    main()
