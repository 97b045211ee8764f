"""Motion between frames: optical flow backends, the reference consistency check, warping, and the
temporal constraints (warped earlier outputs, closest-first certainties, the temporal loss).
"""
