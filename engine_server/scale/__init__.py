"""Scale-out: one strip across the workers of a Ray cluster.

chunks (cut at scene cuts, then long shots) -> cluster (the driver and its Ray workers, one chain per
chunk) -> seams (each seam's window blended from both chains) -> frames in order; feed serves each
worker its chunk's frames a few at a time, staging keeps what the workers sent until it goes out. Ray is
imported only by ``cluster``, and only when a run asks for it.
"""
