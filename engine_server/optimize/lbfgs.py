"""L-BFGS whose whole state lives on the device, so the GPU never waits for the host.

The iterates are those of ``torch.optim.LBFGS(lr=1, max_iter=1, history_size=m, tolerance_grad=0,
tolerance_change=0)`` stepped once per objective evaluation (the reference's setting: unit step, no line
search), but:

- the history is two preallocated (m, n) buffers used as a ring, plus the small Gram matrices S Y^T and
  Y Y^T updated one row and column per iteration, instead of Python lists of vectors;
- the search direction comes from the compact representation of Byrd, Nocedal & Schnabel (1994),
  H g = gamma g + S^T p + gamma Y^T q with p, q from two triangular solves of size m, which reads the
  history twice per iteration as matrix products instead of 4m dependent vector kernels;
- every decision (accept a curvature pair when y.s > 1e-10, stop moving when the direction is not
  downhill) is a tensor operation, never a Python ``if`` on a device value, so nothing synchronizes.
  :attr:`stalled` records a non-downhill direction; the caller reads it when it next syncs and ends the
  frame (PyTorch's loop would keep evaluating at the same point);
- from the second iteration on, every piece of state is updated in place, at fixed addresses, so an
  iteration can be recorded once as a CUDA graph and replayed (:mod:`.iteration`).

One safeguard PyTorch's unit step lacks: ``max_step`` bounds the largest change of any element in one
iteration (the whole step is scaled down, its direction kept, and the pair records the step actually
taken). Without a line search, the second iteration's step is the raw gradient whenever the first,
tiny step (1/|g|_1) gave no usable curvature pair: on a real frame it threw pixels to +-20000 (loss up
10^8 times) before L-BFGS recovered, and in bfloat16, whose gradient noise swamps that tiny step's
gradient change, it never recovered (inf, then NaN). With ``max_step=None`` the iterates are
PyTorch's exactly.
"""
from __future__ import annotations

import torch

CURVATURE_EPS = 1e-10  # torch.optim.LBFGS's threshold on y.s for keeping a pair


class LBFGS:
    def __init__(self, numel: int, history: int = 100, device=None, dtype=torch.float32,
                 max_step: float | None = None):
        m = history
        self.history = m
        self.max_step = max_step
        zeros = dict(device=device, dtype=dtype)
        self.S = torch.zeros(m, numel, **zeros)      # steps s_i
        self.Y = torch.zeros(m, numel, **zeros)      # gradient changes y_i
        self.SY = torch.zeros(m, m, **zeros)         # SY[i, j] = s_i . y_j
        self.YY = torch.zeros(m, m, **zeros)         # YY[i, j] = y_i . y_j
        self.stamp = torch.full((m,), -1, dtype=torch.long, device=device)  # write order; -1 empty
        self.count = torch.zeros((), dtype=torch.long, device=device)      # pairs kept so far
        self.gamma = torch.ones((), **zeros)         # H0 = gamma I, from the newest pair
        self.stalled = torch.zeros((), dtype=torch.bool, device=device)
        self.iteration = 0
        self._prev_grad = torch.zeros(numel, **zeros)
        self._step = torch.zeros(numel, **zeros)     # t * d of the last iteration

    @torch.no_grad()
    def step(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Move ``x`` (flat, updated in place) along the L-BFGS direction at gradient ``grad``."""
        self.iteration += 1
        g = grad.reshape(-1).to(self.S.dtype)
        if self.iteration == 1:
            direction = -g
            t = torch.clamp(1.0 / g.abs().sum(), max=1.0)  # torch's first step: min(1, 1/|g|_1)
        else:
            y, s = g - self._prev_grad, self._step  # (_step is overwritten only after its last use)
            # Every product with the history this iteration needs, in one pass over each (m, n) buffer
            # (the buffers are the iteration's main memory traffic); the slot the new pair goes into is
            # patched afterwards.
            with_s_hist = self.S @ torch.stack([y, g], 1)     # s_j . y, s_j . g
            with_y_hist = self.Y @ torch.stack([s, y, g], 1)  # y_j . s, y_j . y, y_j . g
            slot, keep = self._remember(y, s, with_s_hist[:, 0], with_y_hist[:, 0], with_y_hist[:, 1])
            s_g = with_s_hist[:, 1].index_copy(0, slot, torch.where(keep, s @ g, with_s_hist[slot, 1]))
            y_g = with_y_hist[:, 2].index_copy(0, slot, torch.where(keep, y @ g, with_y_hist[slot, 2]))
            direction = -self._inverse_hessian_times(g, s_g, y_g)
            t = torch.ones((), dtype=g.dtype, device=g.device)
        downhill = (g @ direction) <= 0  # torch stops when g.d > -tolerance_change (= 0)
        self.stalled |= ~downhill
        if self.max_step is not None:
            t = t * torch.clamp(self.max_step / (t * direction).abs().max().clamp_min(1e-30), max=1.0)
        step = torch.where(self.stalled, torch.zeros_like(t), t) * direction
        x.add_(step.view_as(x).to(x.dtype))
        self._prev_grad.copy_(g)
        self._step.copy_(t * direction)  # what torch's next iteration calls s (even when it did not move)

    def _remember(self, y: torch.Tensor, s: torch.Tensor, s_hist_y: torch.Tensor, y_hist_s: torch.Tensor,
                  y_hist_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the pair (s, y) into the ring slot count % m when y.s > eps; otherwise change nothing.
        ``s_hist_y`` etc. are the stored pairs' products with the new one (s_j . y, y_j . s, y_j . y).
        Returns (slot, kept)."""
        ys = y @ s
        keep = ys > CURVATURE_EPS
        slot = torch.remainder(self.count, self.history).reshape(1)
        for buffer, new in ((self.S, s), (self.Y, y)):
            old = buffer.index_select(0, slot)
            buffer.index_copy_(0, slot, torch.where(keep, new[None], old))
        row_sy = y_hist_s.index_copy(0, slot, ys.reshape(1))  # s_new . y_j (j = slot: y_new)
        col_sy = s_hist_y.index_copy(0, slot, ys.reshape(1))  # s_j . y_new
        row_yy = y_hist_y.index_copy(0, slot, (y @ y).reshape(1))
        for matrix, row, col in ((self.SY, row_sy, col_sy), (self.YY, row_yy, row_yy)):
            old_row, old_col = matrix.index_select(0, slot), matrix.index_select(1, slot)
            matrix.index_copy_(0, slot, torch.where(keep, row[None], old_row))
            matrix.index_copy_(1, slot, torch.where(keep, col[:, None], old_col))
        self.stamp.index_copy_(0, slot, torch.where(keep, self.count, self.stamp.index_select(0, slot)))
        self.gamma.copy_(torch.where(keep, ys / (y @ y), self.gamma))
        self.count.add_(keep.long())
        return slot, keep

    def _inverse_hessian_times(self, g: torch.Tensor, s_g: torch.Tensor, y_g: torch.Tensor) -> torch.Tensor:
        """H g by the compact representation, pairs taken in the order they were written; ``s_g`` and
        ``y_g`` are the stored pairs' products with g (S g, Y g)."""
        m = self.history
        valid = self.stamp >= 0
        order = torch.argsort(torch.where(valid, self.stamp, self.stamp.new_full((), m + 2**40)))
        v = valid.index_select(0, order).to(g.dtype)          # chronological; empty slots last
        both = v[:, None] * v[None, :]
        sy = self.SY.index_select(0, order).index_select(1, order) * both
        yy = self.YY.index_select(0, order).index_select(1, order) * both
        # R = upper triangle of S^T Y; empty slots get 1 on the diagonal so they decouple (and stay 0)
        R = torch.triu(sy) + torch.diag(1.0 - v)
        D = torch.diag(torch.diagonal(sy))
        a = s_g.index_select(0, order) * v
        b = self.gamma * y_g.index_select(0, order) * v
        u = torch.linalg.solve_triangular(R, a[:, None], upper=True)[:, 0]                  # R^-1 a
        p = torch.linalg.solve_triangular(R.T, ((D + self.gamma * yy) @ u - b)[:, None], upper=False)[:, 0]
        # back from chronological order to ring slots
        p_slots = torch.zeros_like(p).index_copy(0, order, p)
        u_slots = torch.zeros_like(u).index_copy(0, order, u)
        return self.gamma * g + p_slots @ self.S - self.gamma * (u_slots @ self.Y)
