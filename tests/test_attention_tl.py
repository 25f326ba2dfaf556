"""The `*_tl` head scores reproduce TransformerLens' detect_head; hand example first (no torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax.analysis import attention as att

# TransformerLens 3.x warns that HookedTransformer is deprecated (in favour of TransformerBridge).
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

# Two sequences of T = 4, one head. Sequence 0 repeats token 1 (x[0] == x[1], so TL's induction
# pattern also targets j = i = 1); sequence 1 has no repeat.
TOKENS = np.array([[1, 1, 2, 1], [3, 4, 5, 6]])
A0 = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.5, 0], [0.1, 0.2, 0.3, 0.4]])
A1 = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]          # uniform causal
PATTERN_BHTS = jnp.asarray(np.stack([A0, A1])[:, None], jnp.float32)


def test_detection_patterns_by_hand():
    ind = np.asarray(att.induction_detection_tl(jnp.asarray(TOKENS)))[0]
    dup = np.asarray(att.duplicate_token_detection_tl(jnp.asarray(TOKENS)))[0]
    assert {tuple(ij) for ij in np.argwhere(dup)} == {(1, 0), (3, 0), (3, 1)}
    assert {tuple(ij) for ij in np.argwhere(ind)} == {(1, 1), (3, 1), (3, 2)}
    assert not np.asarray(att.induction_detection_tl(jnp.asarray(TOKENS)))[1].any()


@pytest.mark.parametrize("score, kwargs, expected", [
    # Each sequence: sum(A * D) / sum(A) over all 4 rows (sum(A) = 4), then the mean of the two.
    (att.previous_token_score_tl, {}, ((0.5 + 0.3 + 0.3) / 4 + (1 / 2 + 1 / 3 + 1 / 4) / 4) / 2),
    (att.duplicate_token_score_tl, {}, ((0.5 + 0.1 + 0.2) / 4 + 0) / 2),
    (att.induction_score_tl, {}, ((0.5 + 0.2 + 0.3) / 4 + 0) / 2),
    # exclude_bos zeroes column 0 (sum(A0) = 4 - 1.8); exclude_current_token the diagonal.
    (att.induction_score_tl, {"exclude_bos": True}, ((0.5 + 0.2 + 0.3) / 2.2 + 0) / 2),
    (att.induction_score_tl, {"exclude_current_token": True}, ((0.2 + 0.3) / 1.6 + 0) / 2),
])
def test_tl_scores_by_hand(score, kwargs, expected):
    got = score(PATTERN_BHTS, jnp.asarray(TOKENS), **kwargs)
    assert got.shape == (1,)
    np.testing.assert_allclose(float(got[0]), expected, rtol=1e-6)


def test_tl_scores_differ_from_rows_with_a_target():
    # Rows with a target: only row 3 of sequence 0 (j <= i-1 with x[j-1] == x[i]): 0.5 / 1.
    ours = float(att.induction_score_by_tokens(PATTERN_BHTS, jnp.asarray(TOKENS))[0])
    np.testing.assert_allclose(ours, 0.5, rtol=1e-6)
    assert abs(ours - float(att.induction_score_tl(PATTERN_BHTS, jnp.asarray(TOKENS))[0])) > 0.3


def test_tl_scores_keep_leading_axes():
    pattern_BLHTS = jnp.broadcast_to(PATTERN_BHTS[:, None], (2, 3, 1, 4, 4))
    for score in (att.previous_token_score_tl, att.duplicate_token_score_tl, att.induction_score_tl):
        got = score(pattern_BLHTS, jnp.asarray(TOKENS))
        assert got.shape == (3, 1)
        np.testing.assert_allclose(got, score(PATTERN_BHTS, jnp.asarray(TOKENS))[None].repeat(3, 0))


# ---- against TransformerLens itself ------------------------------------------------------------

V, T = 6, 16


@pytest.fixture(scope="module")
def tl_setup():
    pytest.importorskip("transformer_lens")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    from induction_jax.config import ModelConfig
    from induction_jax.functional import apply
    from induction_jax.interop import to_transformer_lens
    from induction_jax.model import init_params

    # detect_head takes strings: a word-level tokenizer maps "t3" to token 3. No BOS token (TL
    # would fetch a BOS-adding copy from the hub otherwise); the pad token is never used.
    word = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token=None))
    word.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word, pad_token="t0")
    params = init_params(ModelConfig(d_vocab=V, n_ctx=T + 4, d_model=16, n_heads=2),
                         jax.random.PRNGKey(0))
    config, state = to_transformer_lens(params, None)
    model = HookedTransformer(HookedTransformerConfig(**config, device="cpu"), tokenizer=tokenizer)
    model.load_state_dict(state)
    # Repeated random halves over 6 tokens: duplicates, induction targets, and x[i-1] == x[i].
    half = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (5, T // 2), 0, V))
    tokens = np.concatenate([half, half], 1)
    assert (tokens[:, 1:] == tokens[:, :-1]).any()
    strings = [" ".join(f"t{x}" for x in row) for row in tokens]
    assert np.array_equal(model.to_tokens(strings[0])[0].numpy(), tokens[0])
    _, act = apply(params, jnp.asarray(tokens), return_activations=True)
    return torch, model, tokens, strings, np.asarray(act.pattern_BLHTS)


SCORES = {"previous_token_head": att.previous_token_score_tl,
          "duplicate_token_head": att.duplicate_token_score_tl,
          "induction_head": att.induction_score_tl}


@pytest.mark.parametrize("head", sorted(SCORES))
def test_tl_scores_equal_detect_head_end_to_end(tl_setup, head):
    """TL's own forward pass and detect_head on the strings vs ours on our patterns."""
    from transformer_lens.head_detector import detect_head

    _, model, tokens, strings, pattern_BLHTS = tl_setup
    theirs = detect_head(model, strings, head).numpy()                      # [L, H]
    ours = np.asarray(SCORES[head](jnp.asarray(pattern_BLHTS), jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
@pytest.mark.parametrize("head", sorted(SCORES))
def test_tl_scores_equal_detect_head_on_our_patterns(tl_setup, head, exclude_bos, exclude_current_token):
    """The same pattern tensors through detect_head (one cache per sequence, averaged as
    detect_head averages a list): only the arithmetic differs, so float32 rounding remains."""
    from transformer_lens import ActivationCache
    from transformer_lens.head_detector import detect_head

    torch, model, tokens, strings, pattern_BLHTS = tl_setup
    kwargs = {"exclude_bos": exclude_bos, "exclude_current_token": exclude_current_token}
    per_sequence = []
    for b, text in enumerate(strings):
        cache = ActivationCache({f"blocks.{layer}.attn.hook_pattern": torch.tensor(pattern_BLHTS[b, layer])
                                 for layer in range(pattern_BLHTS.shape[1])}, model, has_batch_dim=False)
        per_sequence.append(detect_head(model, text, head, cache=cache, **kwargs).numpy())
    ours = np.asarray(SCORES[head](jnp.asarray(pattern_BLHTS), jnp.asarray(tokens), **kwargs))
    np.testing.assert_allclose(ours, np.mean(per_sequence, 0), atol=1e-6)
