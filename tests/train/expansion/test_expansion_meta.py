"""The Llama-3.1-8B shape expanded on the meta device: Concat16 trains ~3.49B of ~11.5B parameters."""

from transformers import LlamaConfig

from train.expansion import ExpansionConfig, apply_freeze_policy, build_meta


def test_concat16_on_llama31_8b_shape():
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    )
    model = build_meta(config, ExpansionConfig(type="concat", method="lerp", num_exp_layers=16))
    assert next(model.parameters()).device.type == "meta"
    total, trainable, frozen = apply_freeze_policy(model)
    block = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert trainable == 16 * (block + 1)
    assert abs(trainable / 1e9 - 3.49) < 0.01
    assert abs(total / 1e9 - 11.52) < 0.01
    assert frozen == total - trainable
