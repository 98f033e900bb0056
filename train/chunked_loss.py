"""lm_head + cross-entropy over chunks of tokens, so the [tokens, vocab] logits are never materialised.

With Llama-3's 128K vocabulary a micro-batch of 32K tokens has 4.2G logits: 8 GB in bf16 plus 17 GB for
the fp32 copy the loss takes. Here each chunk's logits live only inside the forward, which also makes the
gradients (the loss is a sum, so they only need the upstream scalar in backward): no recomputation of the
head, peak extra memory about 12 bytes x chunk x vocab.

The swap is made on one built model instance (`use_chunked_loss`), and the head stays an `nn.Linear` whose
forward runs through its own module call, so ZeRO-3 gathers and releases its weight as for any layer.
"""

from __future__ import annotations

import contextlib

import torch

IGNORE = -100


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `labels` (IGNORE rows count nothing)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int):
        weight_grad = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        hidden_grad = torch.empty_like(hidden) if hidden.requires_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            h, y = hidden[start : start + chunk], labels[start : start + chunk]
            # logits in the compute dtype, the softmax in fp32: what F.cross_entropy(logits.float()) does
            z = (h @ weight.t()).float()
            lse = torch.logsumexp(z, dim=-1)
            valid = y != IGNORE
            target = y.clamp(min=0)
            loss += ((lse - z.gather(1, target[:, None]).squeeze(1)) * valid).sum()
            if hidden_grad is None and weight_grad is None:
                continue
            z.sub_(lse[:, None]).exp_()  # softmax, in place
            z.scatter_add_(1, target[:, None], -torch.ones_like(z[:, :1]))
            z.mul_(valid[:, None])
            dz = z.to(hidden.dtype)
            del z
            if hidden_grad is not None:
                hidden_grad[start : start + chunk] = dz @ weight
            if weight_grad is not None:
                weight_grad += dz.t() @ h
        ctx.save_for_backward(hidden_grad, weight_grad.to(weight.dtype) if weight_grad is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden_grad, weight_grad = ctx.saved_tensors
        # a Python float multiplies in fp32 (a tensor would be rounded to bf16 first: up to 0.2% off the step's
        # world / targets scale); one host sync per micro-batch
        factor = grad_loss.item()
        return tuple(g * factor if g is not None else None for g in (hidden_grad, weight_grad)) + (None, None)


class ChunkedLossHead(torch.nn.Linear):
    """An lm_head that returns the summed token cross-entropy instead of logits while `targets` is open.

    Outside that context it is the plain linear layer (generation and evaluation see logits as usual)."""

    def __init__(self, head: torch.nn.Linear, chunk_tokens: int):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = head.in_features, head.out_features
        self.weight, self.bias = head.weight, None  # the same Parameter: ties and ZeRO state are kept
        self.chunk_tokens = chunk_tokens
        self._labels: torch.Tensor | None = None

    @contextlib.contextmanager
    def targets(self, labels: torch.Tensor):
        """`labels[b, t]` is the target of position t (already shifted), IGNORE where there is none."""
        self._labels = labels
        try:
            yield
        finally:
            self._labels = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._labels is None:
            return super().forward(hidden)
        if hidden.shape[:-1] != self._labels.shape:
            raise ValueError(
                f"hidden states {tuple(hidden.shape)} do not match labels {tuple(self._labels.shape)}"
            )
        flat = hidden.reshape(-1, hidden.size(-1))
        return _LinearCrossEntropy.apply(flat, self.weight, self._labels.reshape(-1), self.chunk_tokens)


def use_chunked_loss(model: torch.nn.Module, chunk_tokens: int) -> ChunkedLossHead:
    """Replace the model's lm_head (found by name, also under a peft wrapper) with a ChunkedLossHead."""
    name = next((n for n, m in model.named_modules() if n.split(".")[-1] == "lm_head"), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no module named lm_head")
    head = model.get_submodule(name)
    if head.bias is not None:
        raise ValueError("train.loss_chunk_tokens supports an lm_head without bias (every Llama has none)")
    new = ChunkedLossHead(head, chunk_tokens)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return new


def chunked_head(model: torch.nn.Module) -> ChunkedLossHead | None:
    """The model's ChunkedLossHead, if the swap was made."""
    return next((m for m in model.modules() if isinstance(m, ChunkedLossHead)), None)
