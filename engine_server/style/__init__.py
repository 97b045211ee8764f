"""What "stylized" means: VGG19 features, the Gatys content and style losses, each painting's Gram
targets blended per frame by keyframed weights, and colour preservation.
"""
