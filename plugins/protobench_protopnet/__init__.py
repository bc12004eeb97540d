"""ProtoPNet (Chen et al., NeurIPS 2019) as a protobench plugin."""
