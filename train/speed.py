"""Speed switches applied to one built model instance (never to library globals): Liger kernels, compiled
blocks, the selective activation-checkpointing policy."""

from __future__ import annotations

import logging

import torch

from train.errors import UserError

log = logging.getLogger(__name__)


def check_liger() -> None:
    if not torch.cuda.is_available():
        raise UserError("model.liger needs a CUDA GPU (Liger's kernels are Triton); set model.liger: false")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        raise UserError(
            "model.liger needs the liger-kernel package: pip install liger-kernel (or set model.liger: false)"
        ) from None


def apply_liger(model: torch.nn.Module) -> int:
    """Swap each Llama RMSNorm and SwiGLU MLP of `model` for Liger's Triton module; returns how many.

    The new modules take over the original Parameter objects, so names, tying and requires_grad are kept.
    RoPE and the fused linear cross-entropy are not swapped: Liger patches those as module-level functions.
    """
    check_liger()
    from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    swaps = [(n, m) for n, m in model.named_modules() if isinstance(m, (LlamaRMSNorm, LlamaMLP))]
    for name, old in swaps:
        with torch.device("meta"):  # shapes only: the original parameters move in below
            if isinstance(old, LlamaRMSNorm):
                new = LigerRMSNorm(old.weight.shape[0], eps=old.variance_epsilon)
            else:
                new = LigerSwiGLUMLP(model.config)
        for pname, param in old.named_parameters(recurse=True):
            owner, _, leaf = pname.rpartition(".")
            setattr(new.get_submodule(owner) if owner else new, leaf, param)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, new)
    log.info("liger: %d modules swapped (RMSNorm, SwiGLU MLP)", len(swaps))
    return len(swaps)


def compile_blocks(layers: torch.nn.ModuleList) -> None:
    """torch.compile each decoder block in place (one compiled graph reused by all blocks of a shape)."""
    for block in layers:
        block.compile()


def _saved_ops() -> set:
    aten = torch.ops.aten
    names = (
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def selective_checkpoint_contexts():
    """Selective activation checkpointing (torch.utils.checkpoint's `context_fn`): the outputs of matmuls
    and attention kernels are kept, the cheap element-wise work between them (RMSNorm, RoPE, SiLU x up) is
    recomputed in the backward."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = _saved_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)
