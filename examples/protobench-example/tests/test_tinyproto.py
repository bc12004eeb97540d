"""The example plugin's own test: protobench's conformance kit on its model."""

from protobench.testing import check_model


def test_tinyproto_keeps_the_contract():
    assert check_model("tinyproto") == []
