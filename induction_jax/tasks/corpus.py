"""The natural-text task's corpus: read, digested, tokenised, split, cached (docs/tasks/text.md).

A corpus is given as `--corpus PATH`:

- a UTF-8 text file, or a folder of them (every regular file below it whose path has no part
  starting with "."; sorted by relative path, concatenated as bytes);
- a nanoGPT-format `.bin` file: uint16 token ids (read with `numpy.memmap`), used as they are,
  the vocabulary being the ids (largest id + 1 must fit `--d-vocab`);
- nothing (`''`, the default): the Python standard library's own source, every `*.py` under
  `sysconfig.get_paths()["stdlib"]` outside site-/dist-packages, sorted, concatenated and cut
  at `max_bytes` (4 MB by default). No download.

The digest (BLAKE2b-128) is of the relative file names and the bytes read (after the cut), so a
changed, added, removed or renamed file changes it. Text is tokenised by a byte-level BPE trained
on the corpus itself (Hugging Face `tokenizers`, vocabulary = the model's d_vocab) or as raw
bytes (vocabulary 256). The token stream of a (corpus digest, tokenizer, vocabulary) is cached
on disk beside the corpus when that folder is writable, else under $XDG_CACHE_HOME or
~/.cache (induction-jax/text/); the BPE's JSON is cached beside it and copied into each run.
The held-out split is the last `heldout_fraction` of the stream, the training split the rest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from induction_jax.config import ConfigError

DEFAULT_MAX_BYTES = 4_000_000
TOKENIZERS = ("bpe", "bytes")
CHUNK_CHARS = 1 << 16            # text is encoded in pieces of about this size, cut at line ends


@dataclass(frozen=True)
class Corpus:
    """What was read: the resolved path, the format ('text' or 'bin'), the digest, files read."""

    path: str
    kind: str
    digest: str
    n_files: int
    n_bytes: int


@dataclass(frozen=True)
class Encoded:
    """A corpus as tokens: the stream (uint16 or int32), the tokenizer and its digest."""

    corpus: Corpus
    tokenizer: str               # 'bpe', 'bytes', or 'ids' (a nanoGPT .bin)
    tokens: np.ndarray
    tokenizer_json: str          # the BPE's JSON ('' for bytes and ids)
    tokenizer_digest: str
    vocab: int                   # largest possible id + 1


def _flag_error(spec: str, why: str, allowed: str) -> ConfigError:
    return ConfigError(f"--corpus {spec!r}: {why}; allowed: {allowed}")


ALLOWED = "a UTF-8 text file, a folder of them, a nanoGPT .bin of uint16 ids, or '' (the stdlib's source)"


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in root.rglob("*.py")
                    if not ({"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
                    and p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    return root, files


def _folder_files(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                  key=lambda p: p.relative_to(root).as_posix())


def _files(spec: str) -> tuple[Path, list[Path], str]:
    """(root, files, kind) of a corpus spec, or a one-line ConfigError naming --corpus."""
    if not spec:
        root, files = stdlib_files()
        if not files:
            raise _flag_error(spec, f"no *.py files under the standard library {root}", ALLOWED)
        return root, files, "text"
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise _flag_error(spec, "the folder holds no files", ALLOWED)
        return path, files, "text"
    if path.is_file():
        return path.parent, [path], "bin" if path.suffix == ".bin" else "text"
    raise _flag_error(spec, "no such file or folder", ALLOWED)


def _signature(files: list[Path]) -> tuple:
    out = []
    for p in files:
        st = p.stat()
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


def read(spec: str, max_bytes: int) -> tuple[Corpus, bytes | np.ndarray]:
    """The corpus and its payload (text bytes, cut at `max_bytes` when > 0; or the .bin's ids)."""
    try:
        root, files, kind = _files(spec)
        return _read(spec, max_bytes, str(root), kind, _signature(files))
    except OSError as e:
        raise _flag_error(spec, f"cannot read it ({e.strerror or type(e).__name__})", ALLOWED) from None


@functools.lru_cache(maxsize=8)
def _read(spec: str, max_bytes: int, root: str, kind: str, signature: tuple):
    h = hashlib.blake2b(digest_size=16)
    if kind == "bin":
        path = signature[0][0]
        if signature[0][1] % 2 or signature[0][1] < 4:
            raise _flag_error(spec, f"a .bin must hold uint16 token ids (an even size of at least 4 bytes); "
                              f"has {signature[0][1]} bytes", ALLOWED)
        ids = np.memmap(path, dtype=np.uint16, mode="r")
        h.update(b"bin|")
        h.update(np.ascontiguousarray(ids).tobytes())
        return Corpus(os.path.abspath(path), kind, h.hexdigest(), 1, int(ids.nbytes)), np.asarray(ids)
    parts, total = [], 0
    for name, _, _ in signature:
        if max_bytes and total >= max_bytes:
            break
        data = Path(name).read_bytes()
        if max_bytes:
            data = data[: max_bytes - total]
        h.update(os.path.relpath(name, root).encode() + b"|" + str(len(data)).encode() + b"|")
        h.update(data)
        parts.append(data)
        total += len(data)
    text = b"".join(parts)
    if len(text) < 2:
        raise _flag_error(spec, f"has {len(text)} bytes; needs at least 2", ALLOWED)
    path = root if (not spec or Path(spec).is_dir()) else signature[0][0]
    return Corpus(os.path.abspath(path), kind, h.hexdigest(), len(parts), len(text)), text


# ---- tokenisation and its cache ----------------------------------------------------------------
def cache_dir(corpus: Corpus) -> Path:
    """Beside the corpus (a hidden folder next to it) when writable, else the user's cache."""
    beside = Path(corpus.path).parent / f".{Path(corpus.path).name}.induction-jax"
    if os.access(beside.parent, os.W_OK) and Path(corpus.path).parent != Path(sysconfig.get_paths()["stdlib"]).parent:
        return beside
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "induction-jax" / "text"


def _write(path: Path, data: bytes) -> None:
    from induction_jax.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, data)


def train_bpe(text: str, vocab: int):
    """A byte-level BPE of `vocab` tokens trained on `text` (its 256 byte symbols first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(_pieces(text), trainer)
    return tok


def _pieces(text: str) -> list[str]:
    """The text in pieces of about CHUNK_CHARS characters, each ending at a line end."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def bpe_encode(tok, text: str) -> np.ndarray:
    return np.concatenate([np.asarray(e.ids, np.int64) for e in tok.encode_batch(_pieces(text))] or
                          [np.zeros(0, np.int64)])


def encode(spec: str, max_bytes: int, tokenizer: str, d_vocab: int) -> Encoded:
    """The corpus as tokens for a model of `d_vocab`, or a one-line ConfigError naming the flag."""
    corpus, payload = read(spec, max_bytes)
    if corpus.kind == "bin":
        ids = payload
        vocab = int(ids.max()) + 1
        if vocab > d_vocab:
            raise ConfigError(f"--d-vocab {d_vocab}: the .bin corpus {spec!r} holds token ids up to {vocab - 1}; "
                              f"allowed: >= {vocab}")
        return Encoded(corpus, "ids", ids, "", corpus.digest, vocab)
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"--tokenizer {tokenizer!r}: unknown; allowed: {', '.join(TOKENIZERS)}")
    if tokenizer == "bytes":
        if d_vocab < 256:
            raise ConfigError(f"--d-vocab {d_vocab}: --tokenizer bytes needs a vocabulary of 256; allowed: >= 256")
        return Encoded(corpus, "bytes", np.frombuffer(payload, np.uint8), "",
                       hashlib.blake2b(b"bytes", digest_size=16).hexdigest(), 256)
    if not 256 <= d_vocab <= 65536:
        raise ConfigError(f"--d-vocab {d_vocab}: --tokenizer bpe starts from the 256 byte symbols and stores "
                          f"ids as uint16; allowed: 256..65536")
    return _bpe(spec, max_bytes, d_vocab)


@functools.lru_cache(maxsize=8)
def _bpe_cached(corpus: Corpus, d_vocab: int, spec: str, max_bytes: int) -> Encoded:
    """Keyed by the corpus (its digest), so a changed corpus is tokenised again."""
    from tokenizers import Tokenizer

    _, payload = read(spec, max_bytes)
    folder = cache_dir(corpus) / f"{corpus.digest}-bpe{d_vocab}"
    tok_path, ids_path = folder / "tokenizer.json", folder / "tokens.npy"
    tokens = None
    if tok_path.is_file() and ids_path.is_file():
        try:
            tok_json = tok_path.read_text()
            tokens = np.load(ids_path, allow_pickle=False)
            Tokenizer.from_str(tok_json)
        except Exception:           # a damaged cache is re-made, never trusted
            tokens = None
    if tokens is None:
        text = payload.decode("utf-8", errors="replace")
        tok = train_bpe(text, d_vocab)
        tok_json = tok.to_str()
        tokens = bpe_encode(tok, text).astype(np.uint16)
        try:
            import io

            buf = io.BytesIO()
            np.save(buf, tokens, allow_pickle=False)
            _write(ids_path, buf.getvalue())
            _write(tok_path, tok_json.encode())
        except OSError:
            pass                                           # an unwritable cache only costs the next run time
    digest = hashlib.blake2b(tok_json.encode(), digest_size=16).hexdigest()
    return Encoded(corpus, "bpe", tokens, tok_json, digest, d_vocab)


def _bpe(spec: str, max_bytes: int, d_vocab: int) -> Encoded:
    return _bpe_cached(read(spec, max_bytes)[0], d_vocab, spec, max_bytes)


def split(tokens: np.ndarray, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training stream, held-out stream): the held-out split is the last fraction of the tokens."""
    n_held = int(round(len(tokens) * heldout_fraction))
    return tokens[: len(tokens) - n_held], tokens[len(tokens) - n_held:]


def describe(enc: Encoded, spec: str, heldout_fraction: float) -> dict:
    """What a run records about its corpus in config.json (`task_inputs`)."""
    train, held = split(enc.tokens, heldout_fraction)
    return {"corpus": spec, "corpus_path": enc.corpus.path, "corpus_format": enc.corpus.kind,
            "corpus_digest": enc.corpus.digest, "corpus_files": enc.corpus.n_files,
            "corpus_bytes": enc.corpus.n_bytes, "tokenizer": enc.tokenizer,
            "tokenizer_digest": enc.tokenizer_digest, "tokenizer_vocab": enc.vocab,
            "n_tokens": int(len(enc.tokens)), "n_train_tokens": int(len(train)),
            "n_heldout_tokens": int(len(held))}


def tokenizer_file(enc: Encoded) -> bytes:
    """What the run directory's tokenizer.json holds: the BPE's JSON, or a note of the fixed map."""
    if enc.tokenizer_json:
        return enc.tokenizer_json.encode()
    return (json.dumps({"kind": enc.tokenizer, "vocab": enc.vocab,
                        "note": "bytes: token = byte value" if enc.tokenizer == "bytes"
                        else "ids: the nanoGPT .bin's uint16 ids as they are"}, indent=2) + "\n").encode()
