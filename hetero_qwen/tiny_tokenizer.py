"""A deterministic tiny byte-level BPE tokenizer carrying the Qwen special tokens.

The embedded tiny model needs a tokenizer that loads through `transformers.AutoTokenizer` offline,
tokenizes like Qwen3.5 (NFC, the Qwen3.5 pre-tokenize regex, byte-level BPE) and carries the same
special tokens in the same order, just with small ids. Layout of a vocabulary of `vocab_size` ids:

    0 .. 255                          the 256 byte tokens, in byte order
    256 .. vocab_size - 27            merges learned from a small built-in text (in learning order)
    vocab_size - 26 .. vocab_size - 1 `<|endoftext|>` .. `</think>`, in the real checkpoint's order

Merges are learned by a few lines of Python here (not the `tokenizers` trainer) so that the output
depends on nothing but this file: ties go to the lexically smallest pair.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .chat_template import our_chat_template
from .special_tokens import ENDOFTEXT, EOS_TOKENS, IM_END, QWEN_SPECIAL_TOKENS

TINY_VOCAB_SIZE = 512

# Qwen3.5's split regex (letters keep their combining marks, digits split one by one).
QWEN35_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small English-and-chat text the merges are learned from, so ordinary prompts compress a bit.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A model reads the prompt, thinks about the question,
and then answers the user. The answer should be short, clear and correct.
You are a helpful assistant. The user asks a question and the assistant answers it.
What is the weather like in Paris today? It is sunny and warm, with a light wind from the west.
Please write a function that returns the sum of two numbers, and explain how it works.
def add(a, b):
    return a + b
for i in range(10):
    print(i, add(i, i))
Let me think about this step by step. First, we read the input. Then we compute the result.
Finally, we check the answer and report it. If something is wrong, we try again.
I think the best way to learn is to practice every day and to ask questions when you are stuck.
The system message tells the assistant how to behave. The tool returns a result in JSON.
There are many things that people want to know: the time, the news, the weather, and the way home.
This is a small text for a tiny tokenizer; it only needs to make common words a little shorter.
Hello, world! How are you? I am fine, thank you. What would you like to do next?
The tokenizer splits text into pieces, and each piece becomes one or more tokens of the vocabulary.
Once upon a time there was a little village by the river. Every morning the baker opened his shop,
the children walked to school, and the farmers drove their tractors into the golden fields.
In the evening, families gathered around the table to share bread, soup, cheese and stories.
Science explains the world through observation, measurement and careful reasoning about evidence.
Mathematics studies numbers, shapes, patterns and proofs; physics studies energy, matter and motion.
Chemistry describes molecules and reactions, while biology describes cells, genes and evolution.
Computers execute programs: sequences of instructions that read memory, compute values and write output.
A function takes parameters and returns a value. A class groups data with the methods that use it.
import json
class Counter:
    def __init__(self):
        self.count = 0
    def increment(self, step=1):
        self.count += step
        return self.count
while True:
    line = input()
    if not line:
        break
    data = json.loads(line)
Errors happen. When a request fails, the server returns a status code and a message explaining why.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the seven days of the week.
January, February, March, April, May, June, July, August, September, October, November, December.
Good questions are specific. Good answers are honest, complete, and kind to the reader.
"""


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN35_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )


def _learn_merges(n_tokens: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Greedy BPE on TRAINING_TEXT until `n_tokens` new tokens exist: (new tokens, merges)."""
    pieces = [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(TRAINING_TEXT)]
    words: Counter[tuple[str, ...]] = Counter(tuple(piece) for piece in pieces)
    known = set(_byte_symbols())
    new_tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    while len(new_tokens) < n_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            raise ValueError(
                f"the built-in training text yields only {len(new_tokens)} merges: "
                f"tiny vocab_size can be at most {256 + len(new_tokens) + len(QWEN_SPECIAL_TOKENS)}"
            )
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in known:
            known.add(merged)
            new_tokens.append(merged)
        words = Counter({_merge_word(word, best, merged): count for word, count in words.items()})
    return new_tokens, merges


def _merge_word(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Tokenizer:
    """The tiny tokenizer as a `tokenizers.Tokenizer` with exactly `vocab_size` ids."""
    n_merged = vocab_size - 256 - len(QWEN_SPECIAL_TOKENS)
    if n_merged < 0:
        raise ValueError(f"vocab_size {vocab_size} is too small: need at least {256 + len(QWEN_SPECIAL_TOKENS)}")
    new_tokens, merges = _learn_merges(n_merged)
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols() + new_tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.add_tokens(
        [AddedToken(text, special=special, normalized=False) for text, special in QWEN_SPECIAL_TOKENS]
    )
    if tokenizer.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise AssertionError("tiny tokenizer size does not match vocab_size")
    return tokenizer


def tiny_special_token_ids(vocab_size: int = TINY_VOCAB_SIZE) -> dict[str, int]:
    """Id of each Qwen special token in the tiny vocabulary: the last ids, in Qwen's order."""
    first = vocab_size - len(QWEN_SPECIAL_TOKENS)
    return {text: first + i for i, (text, _) in enumerate(QWEN_SPECIAL_TOKENS)}


def tiny_eos_token_ids(vocab_size: int = TINY_VOCAB_SIZE) -> list[int]:
    """The ids generation stops at (`<|im_end|>`, `<|endoftext|>`), for generation_config.json."""
    ids = tiny_special_token_ids(vocab_size)
    return [ids[text] for text in EOS_TOKENS]


def write_tiny_tokenizer(directory: Path, vocab_size: int = TINY_VOCAB_SIZE) -> None:
    """Write tokenizer.json and tokenizer_config.json for the tiny model into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer(vocab_size).save(str(directory / "tokenizer.json"), pretty=True)
    config = {
        # TokenizersBackend (alias PreTrainedTokenizerFast) loads tokenizer.json as written; a named class
        # like Qwen2Tokenizer would rebuild the pipeline with its own (Qwen2) split regex.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 262144,
        "chat_template": our_chat_template(),
    }
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")
