"""The feed-forward network (Ghiasi et al.'s arbitrary style transfer) and its stabilization along the flow."""
