"""ProtoTree (Nauta, van Bree, Seifert, CVPR 2021) as a protobench plugin."""
