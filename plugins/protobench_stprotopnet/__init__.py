"""ST-ProtoPNet (Wang et al., ICCV 2023) as a protobench plugin."""
