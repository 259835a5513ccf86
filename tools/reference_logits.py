#!/usr/bin/env python3
"""Independent reference fixtures for hipserve: token ids and logits of SmolLM2-135M-Instruct (GGUF).

The oracle is Hugging Face transformers reading the same GGUF file: its GGUF loader dequantizes every
tensor to float (through gguf-py) and runs the stock HF Llama implementation in float32 on the CPU.
The token ids fed to it come from a tokenizer built here with the `tokenizers` library from the GGUF's
own vocab + merges and the "smollm" pre-tokenizer (Digits(individual_digits) then ByteLevel), because
transformers' GGUF->tokenizer conversion does not know "smollm" and falls back to plain GPT-2 splitting.
Those ids are cross-checked against a small pure-Python byte-level BPE written from the llama.cpp
description of the "smollm" pre-tokenizer.

Writes into --out:
  reference_tokens.json                 awkward strings -> correct ids (+ hf_gguf_ids where transformers differs)
  reference_logits.json                 prompts -> ids, top-20 (id, logit) at every position, greedy continuation,
                                        fp32-vs-fp64 noise estimate
  reference_last_logits_<name>.f32      full-vocab float32 (little-endian) logits at the last prompt position
                                        of the four short prompts

See docs/REFERENCE.md for how to run it and what it found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf  # noqa: E402
import regex  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

TOP_K = 20
ROUND = 4

CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

CODE_PROMPT = (
    "def fibonacci(n):\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    if n < 2:\n"
    "        return n\n"
    "    a, b = 0, 1\n"
)

NON_ASCII_PROMPT = (
    "Grüße aus München! Привет из Москвы. 東京は今日も晴れています。 Das Wetter ist schön 🌞 und wir"
)

# The long prompt: a slice of Project Gutenberg's Frankenstein starting at the heading "Letter 1" (the
# line that is exactly "Letter 1"; the table of contents has " Letter 1", indented). Byte offsets into
# the raw file (UTF-8 with BOM, CRLF line ends): read it as bytes, without newline translation.
LONG_SOURCE = "frankenstein.txt"
LONG_START_MARKER = b"\r\nLetter 1\r\n"
LONG_TARGET_TOKENS = 2048

# name, text, parse_special
TOKEN_CASES: list[tuple[str, str, bool]] = [
    ("empty", "", False),
    ("single_space", " ", False),
    ("space_run", "     ", False),
    ("tab_run", "\t\t\t", False),
    ("newline_run", "\n\n\n\n", False),
    ("mixed_whitespace", " \n \t\t \r\n   x  \n\n y", False),
    ("leading_spaces", "   leading spaces", False),
    ("trailing_spaces", "trailing spaces   ", False),
    ("crlf_lines", "line one\r\nline two\r\n\r\nline four", False),
    ("hello_world", "Hello world", False),
    ("digits_year", "In 2024, 12345 people", False),
    ("digits_mixed", "pi=3.14159, 1,000,000 items, -42, 0x1F, 1e-9, v2.0.1, 3rd", False),
    ("spaces_before_digits", "x =  1\ny =   22\n    10\n    20\n\t7", False),
    ("contractions", "I'm sure you can't, they'll see we've done it; she'd say it's fine. You're right", False),
    ("contractions_upper", "I'M SURE YOU CAN'T, THEY'LL KNOW. don't Don’t", False),
    ("code_indented",
     "def add(a, b):\n    if a is None:\n        return b  # fallback\n\treturn a + b\n\n\nclass X:\n    pass\n",
     False),
    ("emoji", "Hello 👋🏽 world 🎉 flags 🇫🇷🇯🇵 heart ❤️ family 👨‍👩‍👧", False),
    ("cjk", "日本語のテキストと中文文本，还有한국어。", False),
    ("cyrillic", "Съешь же ещё этих мягких французских булок, да выпей чаю.", False),
    ("german_umlauts", "Grüße aus Köln: Straße, Äpfel, Öl und Übermut.", False),
    ("combining_marks", "cafe\u0301 vs café, n\u0303, Z\u0335\u0321a\u0337l\u0336g\u0334o", False),
    ("rtl_and_indic", "مرحبا بالعالم — नमस्ते दुनिया", False),
    ("unicode_numerals", "½ cup, x² + y³, Ⅻ o'clock, ٣٤٥, ３４５", False),
    ("invisible_chars", "a\u00a0b\u200bc\ufeffd\u2028e", False),
    ("url", "See https://example.com/path/to?q=1&x=%20y#frag-2 or mailto:someone@example.org.", False),
    ("punctuation_runs", "Wait!!! Really??? ... ,,, --- *** ((( ))) <<<>>> ```", False),
    ("long_repeat", "a" * 64 + " " + "ab" * 20, False),
    ("chatml_special", "<|im_start|>user\nHi there!<|im_end|>\n", True),
    ("chatml_as_text", "<|im_start|>user\nHi there!<|im_end|>\n", False),
    ("special_lookalikes", "<|im_start|<|im_end|> <|endoftext|>x<|im_start|", True),
    ("non_ascii_prompt", NON_ASCII_PROMPT, False),
]

PROMPTS: list[dict] = [
    {"name": "short_english", "text": "The capital of France is", "parse_special": False, "n_new": 32},
    {"name": "code", "text": CODE_PROMPT, "parse_special": False, "n_new": 32},
    {"name": "non_ascii", "text": NON_ASCII_PROMPT, "parse_special": False, "n_new": 32},
    {"name": "chat", "text": CHAT_PROMPT, "parse_special": True, "n_new": 32},
    {"name": "long_frankenstein", "text": None, "parse_special": False, "n_new": 16},
]
FULL_LOGIT_PROMPTS = ("short_english", "code", "non_ascii", "chat")
FP64_PROMPTS_DEFAULT = ("short_english", "long_frankenstein")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# GGUF vocabulary
# ----------------------------------------------------------------------------------------------------

class GgufVocab:
    def __init__(self, path: Path):
        r = GGUFReader(str(path))
        f = r.fields

        def strings(key):
            fld = f[key]
            return [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]

        def scalar(key, default=None):
            if key not in f:
                return default
            return f[key].contents()

        self.tokens = strings("tokenizer.ggml.tokens")
        self.merges = strings("tokenizer.ggml.merges")
        fld = f["tokenizer.ggml.token_type"]
        self.token_types = [int(fld.parts[i][0]) for i in fld.data]
        self.model = scalar("tokenizer.ggml.model")
        self.pre = scalar("tokenizer.ggml.pre")
        self.add_bos = bool(scalar("tokenizer.ggml.add_bos_token", False))
        self.bos_id = int(scalar("tokenizer.ggml.bos_token_id"))
        self.eos_id = int(scalar("tokenizer.ggml.eos_token_id"))
        self.chat_template = scalar("tokenizer.chat_template")
        self.arch = scalar("general.architecture")
        self.meta = {
            k: scalar(k)
            for k in [
                "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.context_length",
            ]
        }
        self.tensor_types = {t.name: t.tensor_type.name for t in r.tensors}
        self.control = [i for i, t in enumerate(self.token_types) if t == 3]  # CONTROL
        self.user_defined = [i for i, t in enumerate(self.token_types) if t == 4]


def build_tokenizer(v: GgufVocab) -> Tokenizer:
    """The SmolLM2 tokenizer rebuilt from the GGUF vocab/merges with the "smollm" pre-tokenizer."""
    vocab = {tok: i for i, tok in enumerate(v.tokens)}
    merges = [tuple(m.split(" ")) for m in v.merges]
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False,
                     ignore_merges=False)
    tk = Tokenizer(bpe)
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(v.tokens[i], special=True, normalized=False) for i in v.control])
    if v.user_defined:
        tk.add_tokens([AddedToken(v.tokens[i], special=False, normalized=False) for i in v.user_defined])
    # the ids the added tokens got must be their GGUF ids
    for i in v.control + v.user_defined:
        assert tk.token_to_id(v.tokens[i]) == i, (i, v.tokens[i])
    assert tk.get_vocab_size(with_added_tokens=True) == len(v.tokens)
    return tk


def encode(tk: Tokenizer, text: str, parse_special: bool) -> list[int]:
    tk.encode_special_tokens = not parse_special
    try:
        return tk.encode(text, add_special_tokens=False).ids
    finally:
        tk.encode_special_tokens = False


# ----------------------------------------------------------------------------------------------------
# A second, minimal tokenizer: pure-Python byte-level BPE following llama.cpp's description of the
# "smollm" pre-tokenizer (regexes "\p{N}" then the GPT-2 pattern). Only used to cross-check.
# ----------------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class PyBpe:
    GPT2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    DIGIT = regex.compile(r"(\p{N})")

    def __init__(self, v: GgufVocab):
        self.vocab = {t: i for i, t in enumerate(v.tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(v.merges)}
        self.byte_enc = bytes_to_unicode()
        self.specials = sorted((v.tokens[i] for i in v.control), key=len, reverse=True)
        self.special_re = regex.compile("(" + "|".join(regex.escape(s) for s in self.specials) + ")")
        self.cache: dict[str, list[int]] = {}

    def bpe(self, word: str) -> list[int]:
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for j in range(len(parts) - 1):
                r = self.ranks.get((parts[j], parts[j + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = j, r
            if best is None:
                break
            pair = (parts[best], parts[best + 1])
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and (parts[j], parts[j + 1]) == pair:
                    merged.append(parts[j] + parts[j + 1])
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode_plain(self, text: str) -> list[int]:
        out = []
        for chunk in self.DIGIT.split(text):
            if not chunk:
                continue
            for piece in self.GPT2.findall(chunk):
                out += self.bpe("".join(self.byte_enc[b] for b in piece.encode("utf-8")))
        return out

    def encode(self, text: str, parse_special: bool) -> list[int]:
        if not parse_special:
            return self.encode_plain(text)
        out = []
        for k, chunk in enumerate(self.special_re.split(text)):
            if k % 2 == 1:
                out.append(self.vocab[chunk])
            elif chunk:
                out += self.encode_plain(chunk)
        return out


# ----------------------------------------------------------------------------------------------------
# JSON output: structure indented, arrays of numbers on one line
# ----------------------------------------------------------------------------------------------------

def dump_json(obj, indent=0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in obj):
            return "[" + ",".join(json.dumps(x, ensure_ascii=False) for x in obj) + "]"
        items = [pad + " " + dump_json(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError("non-finite float in fixture")
        return json.dumps(obj)
    return json.dumps(obj, ensure_ascii=False)


def r4(x: float) -> float:
    v = round(float(x), ROUND)
    return 0.0 if v == 0 else v


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------

def load_model(model_path: Path, attn: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32, attn_implementation=attn
    )
    m.eval()
    # Every weight must be a dense float32 tensor (dequantized), not a packed GGUF block layer.
    for name, p in m.named_parameters():
        assert p.dtype == torch.float32, (name, p.dtype)
    for name, mod in m.named_modules():
        assert type(mod).__name__ not in ("GgufLinear", "GgufEmbedding"), name
    return m


def check_config(m, v: GgufVocab) -> dict:
    c = m.config
    checks = {
        "num_hidden_layers": (c.num_hidden_layers, v.meta["llama.block_count"]),
        "hidden_size": (c.hidden_size, v.meta["llama.embedding_length"]),
        "intermediate_size": (c.intermediate_size, v.meta["llama.feed_forward_length"]),
        "num_attention_heads": (c.num_attention_heads, v.meta["llama.attention.head_count"]),
        "num_key_value_heads": (c.num_key_value_heads, v.meta["llama.attention.head_count_kv"]),
        "rope_theta": (c.rope_parameters["rope_theta"], v.meta["llama.rope.freq_base"]),
        "rms_norm_eps": (c.rms_norm_eps, v.meta["llama.attention.layer_norm_rms_epsilon"]),
        "vocab_size": (c.vocab_size, len(v.tokens)),
    }
    for k, (a, b) in checks.items():
        assert abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b))), (k, a, b)
    assert c.tie_word_embeddings and "output.weight" not in v.tensor_types
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return {
        "num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.hidden_size // c.num_attention_heads,
        "rope_theta": c.rope_parameters["rope_theta"], "rope_type": c.rope_parameters.get("rope_type"),
        "rms_norm_eps": c.rms_norm_eps, "vocab_size": c.vocab_size, "tie_word_embeddings": True,
    }


@torch.no_grad()
def forward_all(m, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return m(input_ids=x, use_cache=False).logits[0]


def topk_sorted(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Top-k by logit, ties broken by lower token id (stable), logits rounded."""
    idx = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in idx], [r4(row[i]) for i in idx]


@torch.no_grad()
def greedy(m, ids: list[int], n_new: int):
    """Greedy decoding with the KV cache, as an engine does. Returns tokens, their logits, the margin
    to the runner-up, and the per-step top-5."""
    from transformers import DynamicCache
    cache = DynamicCache(config=m.config)
    x = torch.tensor([ids], dtype=torch.long)
    out = m(input_ids=x, cache=cache, use_cache=True)
    toks, logits, margins, top5 = [], [], [], []
    for step in range(n_new):
        row = out.logits[0, -1].double().numpy() if out.logits.dtype == torch.float64 else out.logits[0, -1].numpy()
        order = np.argsort(-row, kind="stable")
        t = int(order[0])
        toks.append(t)
        logits.append(float(row[t]))
        margins.append(float(row[order[0]] - row[order[1]]))
        top5.append([[int(i), r4(row[i])] for i in order[:5]])
        if step + 1 < n_new:
            out = m(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
    return toks, logits, margins, top5


# -- float64 variants -----------------------------------------------------------------------------------
# HF's Llama keeps three pieces in float32 whatever the model dtype: RMSNorm's statistics, the eager
# softmax, and the RoPE angles (position * inv_freq and cos/sin). For a true float64 run these are
# patched to compute in the input's dtype. The RoPE angles can be kept float32 ("rope32") to separate
# that one effect.

_RoPE_MODE = {"mode": "hf"}


def install_fp64_patches():
    from transformers.models.llama import modeling_llama as ml

    def rms_forward(self, hidden_states):
        dt = hidden_states.dtype
        h = hidden_states if dt == torch.float64 else hidden_states.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * h.to(dt)

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key_states = ml.repeat_kv(key, module.num_key_value_groups)
        value_states = ml.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        sdt = torch.float64 if query.dtype == torch.float64 else torch.float32
        w = torch.nn.functional.softmax(w, dim=-1, dtype=sdt).to(query.dtype)
        o = torch.matmul(w, value_states).transpose(1, 2).contiguous()
        return o, w

    orig_rope_forward = ml.LlamaRotaryEmbedding.forward

    def rope_forward(self, x, position_ids):
        if x.dtype != torch.float64 or _RoPE_MODE["mode"] != "fp64":
            return orig_rope_forward(self, x, position_ids)
        base = self.config.rope_parameters["rope_theta"]
        dim = self.config.hidden_size // self.config.num_attention_heads
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    ml.LlamaRMSNorm.forward = rms_forward
    ml.eager_attention_forward = eager
    ml.LlamaRotaryEmbedding.forward = rope_forward


# ----------------------------------------------------------------------------------------------------

def long_slice(texts_dir: Path, tk: Tokenizer):
    path = texts_dir / LONG_SOURCE
    raw = path.read_bytes()
    first = raw.find(LONG_START_MARKER)
    assert first > 0 and raw.find(LONG_START_MARKER, first + 1) < 0
    start = first + 2  # at "Letter 1"
    # Largest end, at the end of a line (just after "\r\n"), whose slice is <= LONG_TARGET_TOKENS tokens.
    ends = []
    pos = start
    while pos < len(raw) and pos - start < 20 * LONG_TARGET_TOKENS:
        nl = raw.find(b"\r\n", pos)
        if nl < 0:
            break
        pos = nl + 2
        ends.append(pos)
    best = None
    lo, hi = 0, len(ends) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        n = len(encode(tk, raw[start:ends[mid]].decode("utf-8"), False))
        if n <= LONG_TARGET_TOKENS:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    end = ends[best]
    text = raw[start:end].decode("utf-8")
    return {
        "file": LONG_SOURCE,
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "file_size": len(raw),
        "byte_start": start,
        "byte_end": end,
        "slice_sha256": hashlib.sha256(raw[start:end]).hexdigest(),
        "note": "text = raw_file_bytes[byte_start:byte_end].decode('utf-8'); read the file as bytes "
                "(UTF-8 with BOM, CRLF line ends, no newline translation); the slice starts at the line "
                "'Letter 1' (the heading, not the indented table-of-contents entry) and ends just after a CRLF",
    }, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--texts", type=Path, default=None,
                    help="folder holding frankenstein.txt (default: ../shared/data/texts, then /work/shared/data/texts)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--fp64-prompts", default=",".join(FP64_PROMPTS_DEFAULT),
                    help="comma-separated prompt names to re-run in float64 for the noise estimate ('' to skip, 'all')")
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = args.texts
    if texts is None:
        for cand in (Path("../shared/data/texts"), Path("/work/shared/data/texts")):
            if (cand / LONG_SOURCE).exists():
                texts = cand
                break
    assert texts is not None and (texts / LONG_SOURCE).exists(), "frankenstein.txt not found; pass --texts"

    header = {
        "generator": "tools/reference_logits.py",
        "command": " ".join([_exe(), "tools/reference_logits.py"] + sys.argv[1:]),
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "gguf": _version("gguf"),
            "tokenizers": tokenizers.__version__, "numpy": np.__version__,
        },
        "model": {"file": args.model.name, "sha256": sha256_file(args.model), "size": args.model.stat().st_size},
    }

    log("reading GGUF vocab ...")
    v = GgufVocab(args.model)
    assert v.model == "gpt2" and v.pre == "smollm", (v.model, v.pre)
    tk = build_tokenizer(v)
    py = PyBpe(v)
    # the chat prompt is the GGUF's own chat template, rendered with its default system message
    from jinja2 import Template
    rendered = Template(v.chat_template).render(
        messages=[{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
    assert rendered == CHAT_PROMPT, rendered

    log("loading transformers' GGUF tokenizer ...")
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)
    hf_pre = json.loads(hf_tok.backend_tokenizer.to_str())["pre_tokenizer"]

    def hf_ids(text, parse_special):
        return hf_tok(text, add_special_tokens=False, split_special_tokens=not parse_special).input_ids

    tokenizer_desc = {
        "built_with": f"tokenizers {tokenizers.__version__} from the GGUF's tokenizer.ggml.tokens/merges",
        "model": "BPE(ignore_merges=False, byte_fallback=False, unk=None)",
        "pre_tokenizer": "Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]",
        "decoder": "ByteLevel",
        "special_tokens": "GGUF token_type CONTROL (ids %s) matched whole when parse_special" % _ranges(v.control),
        "gguf_pre": v.pre, "add_bos": v.add_bos, "bos_id": v.bos_id, "eos_id": v.eos_id,
        "cross_check": "every id list below equals a pure-Python byte-level BPE using llama.cpp's 'smollm' "
                       "regexes ['\\p{N}', GPT-2 pattern]",
        "hf_gguf_tokenizer_pre_tokenizer": hf_pre,
    }

    # ---- tokens fixture ------------------------------------------------------------------------------
    token_entries = []
    n_hf_diff = 0
    for name, text, ps in TOKEN_CASES:
        ids = encode(tk, text, ps)
        ids_py = py.encode(text, ps)
        assert ids == ids_py, (name, ids, ids_py)
        dec = tk.decode(ids, skip_special_tokens=False)
        assert dec == text, (name, dec, text)
        e = {"name": name, "text": text, "parse_special": ps, "ids": ids,
             "pieces": [v.tokens[i] for i in ids], "utf8_hex": text.encode("utf-8").hex()}
        h = hf_ids(text, ps)
        if h != ids:
            e["hf_gguf_ids"] = h
            n_hf_diff += 1
        token_entries.append(e)
    tokens_doc = {
        "header": {**header, "tokenizer": tokenizer_desc,
                   "notes": [
                       "ids: the correct SmolLM2 ids (no BOS: add_bos_token is false)",
                       "parse_special=true: '<|im_start|>' etc. become their control ids; false: they are "
                       "tokenized as plain text",
                       "pieces: the vocab strings of the ids (GPT-2 byte-to-unicode alphabet)",
                       "hf_gguf_ids: present only where transformers' own GGUF-converted tokenizer "
                       "(AutoTokenizer.from_pretrained(dir, gguf_file=...)) gives different ids",
                       "utf8_hex: the exact bytes of text",
                   ]},
        "cases": token_entries,
    }
    (args.out / "reference_tokens.json").write_text(dump_json(tokens_doc) + "\n", encoding="utf-8")
    log(f"reference_tokens.json: {len(token_entries)} cases, {n_hf_diff} differ from transformers' GGUF tokenizer")

    # ---- model --------------------------------------------------------------------------------------
    log("loading model (transformers GGUF loader, dequantized to float32) ...")
    model = load_model(args.model, args.attn)
    cfg = check_config(model, v)

    src, long_text = long_slice(texts, tk)
    prompts = []
    for p in PROMPTS:
        p = dict(p)
        if p["name"] == "long_frankenstein":
            p["text"] = long_text
            p["source"] = src
        prompts.append(p)

    out_prompts = []
    cache_vs_full = 0.0
    logits32: dict[str, np.ndarray] = {}
    greedy32: dict[str, list[int]] = {}
    for p in prompts:
        name, text, ps = p["name"], p["text"], p["parse_special"]
        ids = encode(tk, text, ps)
        assert ids == py.encode(text, ps), name
        assert tk.decode(ids, skip_special_tokens=False) == text, name
        log(f"[{name}] {len(ids)} tokens: forward ...")
        lg = forward_all(model, ids).numpy()
        assert np.isfinite(lg).all()
        logits32[name] = lg
        top_ids, top_logits = zip(*(topk_sorted(lg[i], TOP_K) for i in range(len(ids))))
        log(f"[{name}] greedy {p['n_new']} ...")
        g, gl, gm, g5 = greedy(model, ids, p["n_new"])
        greedy32[name] = g
        # consistency: a full forward over prompt+continuation gives the same tokens and logits
        full = forward_all(model, ids + g).numpy()
        for s, t in enumerate(g):
            row = full[len(ids) - 1 + s]
            assert int(np.argmax(row)) == t or abs(row.max() - row[t]) < 1e-3, (name, s)
            cache_vs_full = max(cache_vs_full, abs(float(row[t]) - gl[s]))
        assert top_ids[-1][0] == g[0]
        entry = {"name": name}
        if "source" in p:
            entry["source"] = p["source"]
            entry["text"] = None
        else:
            entry["text"] = text
        entry["parse_special"] = ps
        entry["n_tokens"] = len(ids)
        entry["ids"] = ids
        h = hf_ids(text, ps)
        if h != ids:
            entry["hf_gguf_ids"] = h
        entry["top_k"] = TOP_K
        entry["top_ids"] = [list(x) for x in top_ids]
        entry["top_logits"] = [list(x) for x in top_logits]
        eos_at = next((i for i, t in enumerate(g) if t == v.eos_id), None)
        entry["greedy"] = {
            "n_new": p["n_new"],
            "ids": g,
            "logits": [r4(x) for x in gl],
            "margin_to_second": [r4(x) for x in gm],
            "top5": g5,
            "first_eos_index": eos_at,
            "text": tk.decode(g, skip_special_tokens=False),
            "text_until_eos": tk.decode(g[:eos_at] if eos_at is not None else g, skip_special_tokens=False),
        }
        if name in FULL_LOGIT_PROMPTS:
            fn = f"reference_last_logits_{name}.f32"
            row = np.ascontiguousarray(lg[-1], dtype="<f4")
            (args.out / fn).write_bytes(row.tobytes())
            entry["last_logits_file"] = fn
            entry["last_logits_format"] = (f"raw little-endian float32, {row.size} values (vocab_size): the "
                                           "unrounded logits at the last prompt position")
            entry["last_logits_sha256"] = hashlib.sha256(row.tobytes()).hexdigest()
        out_prompts.append(entry)
        log(f"[{name}] greedy: {entry['greedy']['text']!r}")

    # ---- float64 noise estimate ---------------------------------------------------------------------
    fp64_names = [x for x in args.fp64_prompts.split(",") if x]
    if fp64_names == ["all"]:
        fp64_names = [p["name"] for p in prompts]
    noise = {"method": (
        "The same dequantized weights (Q4_1/Q8_0 dequantization is exact in float32; checked) run in float64: "
        "model.double() plus patches so that RMSNorm and the eager softmax, which HF forces to float32, "
        "compute in float64. 'fp64' also computes the RoPE angles (position*inv_freq, cos, sin) in float64; "
        "'fp64_rope32' keeps HF's float32 angles (as the fp32 run has), isolating the RoPE angle rounding. "
        "Deltas are |logit_fp32 - logit_fp64| over every position and the whole vocabulary."),
        "prompts": []}
    if fp64_names:
        exact = check_dequant_exact(args.model)
        noise["dequant_exact_in_fp32"] = exact
        install_fp64_patches()
        # the patched float32 path must still give the same float32 logits
        chk = forward_all(model, encode(tk, prompts[0]["text"], False)).numpy()
        assert np.array_equal(chk, logits32[prompts[0]["name"]]) or np.abs(chk - logits32[prompts[0]["name"]]).max() < 1e-5
        model.double()
        for p in prompts:
            if p["name"] not in fp64_names:
                continue
            ids = encode(tk, p["text"], p["parse_special"])
            rec = {"name": p["name"], "n_tokens": len(ids)}
            for mode in ("fp64", "fp64_rope32"):
                _RoPE_MODE["mode"] = "fp64" if mode == "fp64" else "hf"
                log(f"[{p['name']}] float64 forward ({mode}) ...")
                lg64 = forward_all(model, ids).numpy()
                d = np.abs(logits32[p["name"]].astype(np.float64) - lg64)
                top_mask = np.zeros_like(d, dtype=bool)
                for i in range(len(ids)):
                    top_mask[i, np.argsort(-lg64[i], kind="stable")[:TOP_K]] = True
                stat = {
                    "max_abs_delta": float(d.max()),
                    "max_abs_delta_top20": float(d[top_mask].max()),
                    "max_abs_delta_last_position": float(d[-1].max()),
                    "mean_abs_delta": float(d.mean()),
                    "p99_abs_delta": float(np.quantile(d, 0.99)),
                    "argmax_agreement": float((lg64.argmax(-1) == logits32[p["name"]].argmax(-1)).mean()),
                }
                if len(ids) > 256:
                    stat["max_abs_delta_first_256_positions"] = float(d[:256].max())
                if mode == "fp64":
                    g64, _, _, _ = greedy(model, ids, p["n_new"])
                    stat["greedy_same_as_fp32"] = g64 == greedy32[p["name"]]
                rec[mode] = stat
                log(f"[{p['name']}] {mode}: {stat}")
            noise["prompts"].append(rec)
        _RoPE_MODE["mode"] = "hf"
        # (the model is left in float64: transformers refuses .float() on a GGUF-loaded model)

    doc = {
        "header": {
            **header,
            "dtype": "float32",
            "fp64_used_for": "only the numeric_noise section" if fp64_names else "nothing",
            "device": "cpu", "torch_threads": args.threads, "attn_implementation": args.attn,
            "loader": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) -> legacy GGUF "
                      "loader: gguf-py dequantizes every tensor to float32, Q/K rows un-permuted, tied lm_head",
            "model_config": cfg,
            "tokenizer": {k: tokenizer_desc[k] for k in ("built_with", "pre_tokenizer", "gguf_pre", "add_bos")},
            "bos_added": False,
            "logit_rounding": f"{ROUND} decimals",
            "kv_cache_vs_full_forward_max_abs_delta": cache_vs_full,
            "notes": [
                "top_ids[i]/top_logits[i]: the 20 largest logits at position i (predicting token i+1), "
                "sorted by logit descending, ties by lower id",
                "greedy: argmax decoding with the KV cache, no sampling, no BOS, no stop on EOS (first_eos_index "
                "says where <|im_end|> appeared); logits = the chosen token's logit at each step; "
                "margin_to_second = its lead over the runner-up",
                "long_frankenstein has no text: re-read it from ../shared/data/texts/frankenstein.txt using "
                "source.byte_start/byte_end and check slice_sha256",
            ],
        },
        "numeric_noise": noise,
        "prompts": out_prompts,
    }
    (args.out / "reference_logits.json").write_text(dump_json(doc) + "\n", encoding="utf-8")
    log(f"done in {time.time() - t0:.0f}s")


def check_dequant_exact(model_path: Path) -> bool:
    """Q4_1 values d*q+m and Q8_0 values d*q computed in float32 equal the exact (float64) values."""
    r = GGUFReader(str(model_path))
    for t in r.tensors:
        name = t.tensor_type.name
        if name == "Q4_1":
            b = np.asarray(t.data).reshape(-1, 20)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
            mn = b[:, 2:4].copy().view(np.float16).astype(np.float64)
            q = np.concatenate([b[:, 4:20] & 0xF, b[:, 4:20] >> 4], axis=1).astype(np.float64)
            exact = d * q + mn
            f32 = d.astype(np.float32) * q.astype(np.float32) + mn.astype(np.float32)
        elif name == "Q8_0":
            b = np.asarray(t.data).reshape(-1, 34)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
            q = b[:, 2:34].copy().view(np.int8).astype(np.float64)
            exact = d * q
            f32 = d.astype(np.float32) * q.astype(np.float32)
        else:
            continue
        if not np.array_equal(f32.astype(np.float64), exact):
            return False
    return True


def _exe() -> str:
    """The interpreter as typed from the repository root (e.g. .venv-ref/bin/python)."""
    rel = os.path.relpath(sys.executable)
    return rel if not rel.startswith("..") else Path(sys.executable).name


def _version(pkg: str) -> str:
    from importlib.metadata import version
    return version(pkg)


def _ranges(ids: list[int]) -> str:
    if not ids:
        return "none"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(map(str, ids))


if __name__ == "__main__":
    main()
