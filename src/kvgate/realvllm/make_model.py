"""Make a tiny Llama model + byte-level BPE tokenizer on local disk (no hub downloads).

Runs under the vLLM venv's python (it has torch + transformers; kvgate's own venv has neither), so it
imports nothing from kvgate:  ``<vllm-venv>/bin/python make_model.py OUT_DIR``.
Deterministic: fixed corpus and seeds, so every machine builds the same tokenizer and weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB_SIZE = 2048
MAX_POSITIONS = 4096

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "one",
    "all",
    "we",
    "their",
    "can",
    "has",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "system",
    "user",
    "assistant",
    "answer",
    "question",
    "model",
    "cache",
    "prefix",
    "token",
    "block",
    "server",
    "route",
    "gateway",
    "request",
    "latency",
    "memory",
    "engine",
    "kernel",
    "tensor",
    "batch",
    "queue",
    "load",
    "balance",
    "picker",
    "endpoint",
    "vector",
    "sequence",
    "document",
    "context",
]


def _corpus() -> list[str]:
    import random

    rng = random.Random(7)
    lines = []
    for _ in range(4000):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30))))
    lines += ["".join(chr(c) for c in range(32, 127))] * 10
    return lines


def make(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    (out / "kvgate-tiny.json").write_text(json.dumps({"vocab_size": VOCAB_SIZE, "made_by": "kvgate"}))


if __name__ == "__main__":
    make(Path(sys.argv[1]))
