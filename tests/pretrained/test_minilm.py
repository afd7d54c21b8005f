"""Chapter 5's pretrained encoder: the MiniLM package loaded offline as a sentence embedder."""

import pytest

from minillm.pretrained import embed, load_minilm_encoder


@pytest.mark.slow
def test_encoder_embeds_unit_vectors_and_ranks_paraphrases():
    model, tok = load_minilm_encoder()
    e = embed(model, tok, ["The king is dead.", "The monarch has died.", "Pass the salt, please."])
    assert e.shape == (3, 384)
    assert (e.norm(dim=1) - 1).abs().max() < 1e-5
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.2
