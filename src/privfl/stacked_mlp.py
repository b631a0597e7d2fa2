"""Hand-written SGD steps for stacked perceptrons: no autograd graph, no optimizer pass.

For clients' copies of a ``Linear-ReLU-...-Linear`` network trained with
cross-entropy, :class:`StackedMLP` writes a training step's backward pass out
(backpropagation, Rumelhart, Hinton & Williams 1986, "Learning representations by
back-propagating errors", Nature 323) and fuses each linear layer's weight gradient
into its update: ``torch.baddbmm(W, x^T, g, alpha=-lr)`` in place adds
``-lr * x^T g`` to the weights, so the gradient is never stored and the weights are
read and written once per step, where autograd then SGD writes the gradient, reads it
back and reads and writes the weights. With ten clients' weights stacked (8 MB for
the 2NN, more than a core's cache) those passes over memory are most of a step.

Hand-written because no library fuses a batched matmul into an in-place SGD update
(``torch.func`` and ``torch.compile`` still form the gradient; the latter also costs
seconds of compilation a run). The arithmetic is autograd's, in the same order within
each operation up to the summation order of matmuls: the softmax cross-entropy
gradient ``(softmax(z) - onehot(y)) * scale`` (``scale``: an example's weight over
its batch's count of real examples, so that padding of weight zero contributes
nothing), ReLU's gradient zero where its output is zero, and FedProx's pull
``mu * (w - w_global)`` (Li et al. 2020) added to each gradient.

Two more passes over the weights are saved where all clients start from the same
global parameters: a first step reads them once for all clients (one matmul of every
client's examples) and writes each client's stepped copy, so no copy is made before
it; and a client's only step (clients smaller than a batch, one epoch: 10,000 clients
of MNIST) writes ``-lr * gradient``, its update, straight where the update is wanted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StackedMLP:
    """SGD steps of stacked clients' ``Linear-ReLU-...-Linear`` networks, in place.

    :param widths: Output features of each linear layer, first to last.
    :param clients: Most clients per step; with ``batch``, sizes the activation buffers.
    :param batch: Most examples per client per step.
    """

    def __init__(self, widths: Sequence[int], clients: int, batch: int) -> None:
        self.widths = list(widths)
        self.clients, self.batch = clients, batch
        # Each layer's activations, up to [clients, batch, width]: a step views the front
        # of them, so a round allocates nothing per step but the small softmax.
        self._outputs = [torch.empty(clients * batch * width) for width in widths]
        self._minus_ones = torch.full((clients * batch, 1), -1.0)

    def step(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor | None],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        scale: torch.Tensor,
        *,
        lr: float,
        proximal_mu: float = 0.0,
        start: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
        log_likelihood: torch.Tensor,
        into: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
        changes: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
    ) -> None:
        """One SGD step of each of ``A`` clients, updating ``weights`` and ``biases`` in place.

        :param weights: Per layer, ``[A, in, out]`` (stored transposed), or ``[in, out]``
            shared by all clients, with ``into`` or ``changes``.
        :param biases: Per layer, ``[A, out]`` (or ``[out]``, shared) or None.
        :param inputs: ``[A, batch, in]`` examples of each client's batch.
        :param targets: ``[A, batch]`` class indices.
        :param scale: ``[A, batch]`` each example's weight over its batch's real examples.
        :param proximal_mu: FedProx's ``mu``; with it, ``start`` holds each layer's
            ``(weight, bias)`` of the global model (``[in, out]``, ``[out]``).
        :param log_likelihood: ``[A, batch]``, receives each example's log-probability of
            its target under the parameters before the step (``-loss``).
        :param into: Per layer, the ``(weight, bias)`` blocks that receive each client's
            parameters after the step, where all clients start from the shared
            ``weights`` and ``biases`` (their first step): the shared ones stay as they
            are, and no client's copy of them needs to be written before the step.
        :param changes: Instead of ``into``, per layer, ``[A, out, in]`` and ``[A, out]``
            in the model's layout, which receive the step's change ``-lr * gradient``:
            for clients whose only step this is, the change is their update, written
            where it is wanted without a copy of the parameters.
        """
        clients, batch = inputs.shape[:2]
        if clients * batch > self.clients * self.batch:
            raise ValueError(
                f"{clients} clients of {batch} examples a step exceed the buffers' "
                f"{self.clients} clients of {self.batch}"
            )
        layer_inputs = [inputs]
        x = inputs
        last = len(weights) - 1
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            out = self._outputs[i][: clients * batch * self.widths[i]].view(clients, batch, -1)
            if weight.dim() == 2:  # shared: one matmul of every client's examples
                rows, out_rows = x.view(-1, x.shape[2]), out.view(-1, out.shape[2])
                if bias is None:
                    torch.mm(rows, weight, out=out_rows)
                else:
                    torch.addmm(bias, rows, weight, out=out_rows)
            elif bias is None:
                torch.bmm(x, weight, out=out)
            else:
                torch.baddbmm(bias.unsqueeze(1), x, weight, out=out)
            if i < last:
                out.relu_()
                layer_inputs.append(out)
            x = out
        grad = torch.log_softmax(x, dim=2)
        picked = targets.unsqueeze(2)
        torch.gather(grad, 2, picked, out=log_likelihood.unsqueeze(2))
        grad.exp_()  # softmax, as autograd's log-softmax backward computes it
        minus_ones = self._minus_ones[: clients * batch].view(clients, batch, 1)
        grad.scatter_add_(2, picked, minus_ones)  # - onehot(target)
        grad.mul_(scale.unsqueeze(2))
        for i in range(last, -1, -1):
            weight, bias, x = weights[i], biases[i], layer_inputs[i]
            below = None
            if i > 0:  # the input's gradient, from the weights before their update
                # ReLU's gradient with autograd's own kernel: zero where it output zero
                # (a boolean mask costs 50x more on CPU).
                if weight.dim() == 2:
                    below = torch.mm(grad.view(-1, grad.shape[2]), weight.t()).view_as(x)
                else:
                    below = torch.bmm(grad, weight.transpose(1, 2))
                below = torch.ops.aten.threshold_backward(below, x, 0.0)
            if changes:  # an only step: the pull towards the start is zero
                weight_change, bias_change = changes[i]
                gradient_rows = grad.transpose(1, 2)  # x^T g, transposed: the model's layout
                torch.baddbmm(weight_change, gradient_rows, x, beta=0, alpha=-lr, out=weight_change)
                if bias is not None:
                    assert bias_change is not None
                    torch.mul(grad.sum(dim=1), -lr, out=bias_change)
                if below is not None:
                    grad = below
                continue
            if into:  # a first step: the pull towards the start is zero
                weight_into, bias_into = into[i]
                torch.baddbmm(weight, x.transpose(1, 2), grad, alpha=-lr, out=weight_into)
                if bias is not None:
                    assert bias_into is not None
                    torch.add(bias, grad.sum(dim=1), alpha=-lr, out=bias_into)
                if below is not None:
                    grad = below
                continue
            if proximal_mu:
                start_weight, start_bias = start[i]
                weight.lerp_(start_weight, lr * proximal_mu)  # w - lr * mu * (w - w_global)
                if bias is not None:
                    assert start_bias is not None
                    bias.lerp_(start_bias, lr * proximal_mu)
            weight.baddbmm_(x.transpose(1, 2), grad, alpha=-lr)
            if bias is not None:  # the bias gradient is the sum of grad over the batch
                bias.add_(grad.sum(dim=1), alpha=-lr)
            if below is not None:
                grad = below
