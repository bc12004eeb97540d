"""ProtoViT (Ma et al., NeurIPS 2024) as a protobench plugin."""
