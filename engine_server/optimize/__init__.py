"""One frame's optimization: the objective (weighted content, style, smoothness and temporal terms)
and the optimizer that minimizes it (L-BFGS or Adam, with early stop, progress and cancel).
"""
