"""The official ProtoViT state dict (github Henrymachiyu/ProtoViT, commit 31f6378) loaded into ours.

The official names and shapes are generated here from the layout its code builds, not from its code:
``model.py`` (``PPNet``: ``features``, ``prototype_vectors [P, D, K]``, ``patch_select [1, P, K]``, ``ones``,
``last_layer``) and ``tools/deit_features.py`` / ``tools/cait_features.py`` (timm 0.4.12's DeiT / CaiT under
``features.``), as exported with ``model.state_dict()`` from the pickled model that ``save.py`` writes. Values
are random; the converted model must load strictly, put every tensor in its place and compute what the
official forward (``conv_features``, ``subpatch_dist``, ``greedy_distance``, ``last_layer``) computes from the
official tensors.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from protobench_protovit.model import ProtoViT
from protobench_protovit.official import convert
from protobench_protovit.plugin import SPEC

C, PER_CLASS, K = 3, 2, 4  # classes, prototypes per class, sub-prototypes
P = C * PER_CLASS  # the official prototype_shape[0]
TEMP, RADIUS = 100.0, 1  # the official settings.py sig_temp and radius


def linear(prefix: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def deit_tiny_layout() -> tuple[dict[str, tuple[int, ...]], int]:
    """timm 0.4.12 ``deit_tiny_patch16_224`` (``VisionTransformer``, D 192, 12 blocks), head deleted."""
    d = 192
    shapes = {"features.cls_token": (1, 1, d), "features.pos_embed": (1, 197, d),
              "features.patch_embed.proj.weight": (d, 3, 16, 16), "features.patch_embed.proj.bias": (d,)}
    for i in range(12):
        b = f"features.blocks.{i}"
        shapes |= norm(f"{b}.norm1", d) | linear(f"{b}.attn.qkv", 3 * d, d) | linear(f"{b}.attn.proj", d, d)
        shapes |= norm(f"{b}.norm2", d) | linear(f"{b}.mlp.fc1", 4 * d, d) | linear(f"{b}.mlp.fc2", d, 4 * d)
    return shapes | norm("features.norm", d), d


def cait_xxs24_layout() -> tuple[dict[str, tuple[int, ...]], int]:
    """timm 0.4.12 ``cait_xxs24_224`` (``Cait``, D 192, 4 heads, 24 talking-heads blocks, 2 class-attention
    blocks; no cls position), head deleted."""
    d, heads = 192, 4
    shapes = {"features.cls_token": (1, 1, d), "features.pos_embed": (1, 196, d),
              "features.patch_embed.proj.weight": (d, 3, 16, 16), "features.patch_embed.proj.bias": (d,)}
    for i in range(24):
        b = f"features.blocks.{i}"
        shapes |= {f"{b}.gamma_1": (d,), f"{b}.gamma_2": (d,)} | norm(f"{b}.norm1", d) | norm(f"{b}.norm2", d)
        shapes |= linear(f"{b}.attn.qkv", 3 * d, d) | linear(f"{b}.attn.proj", d, d)
        shapes |= linear(f"{b}.attn.proj_l", heads, heads) | linear(f"{b}.attn.proj_w", heads, heads)
        shapes |= linear(f"{b}.mlp.fc1", 4 * d, d) | linear(f"{b}.mlp.fc2", d, 4 * d)
    for i in range(2):
        b = f"features.blocks_token_only.{i}"
        shapes |= {f"{b}.gamma_1": (d,), f"{b}.gamma_2": (d,)} | norm(f"{b}.norm1", d) | norm(f"{b}.norm2", d)
        for name in ("q", "k", "v", "proj"):
            shapes |= linear(f"{b}.attn.{name}", d, d)
        shapes |= linear(f"{b}.mlp.fc1", 4 * d, d) | linear(f"{b}.mlp.fc2", d, 4 * d)
    return shapes | norm("features.norm", d), d


LAYOUTS = {"deit_tiny_patch16_224": deit_tiny_layout, "cait_xxs24_224": cait_xxs24_layout}


def official_state(backbone: str, seed: int = 0, head: bool = False) -> dict[str, torch.Tensor]:
    """An official ProtoViT state dict with random values; ``head``: a DeiT built with ``pretrained=False``."""
    shapes, d = LAYOUTS[backbone]()
    shapes |= {"prototype_vectors": (P, d, K), "patch_select": (1, P, K), "ones": (P, d, K),
               "last_layer.weight": (C, P)}
    if head:
        shapes |= linear("features.head", 200, d)
    g = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=g) * (0.05 if key.endswith(".weight") else 0.5)
             for key, shape in shapes.items()}
    state["ones"] = torch.ones(P, d, K)
    return state


def config(backbone: str) -> dict:
    return SPEC.config("paper", backbone=backbone, weights=None, num_classes=C, prototypes_per_class=PER_CLASS,
                       sub_prototypes=K, radius=RADIUS, slot_temperature=TEMP, input_size=224)


def official_latent(backbone: str, state: dict, x: torch.Tensor) -> torch.Tensor:
    """The official ``conv_features`` on normalised ``x``: timm's modules, the official token steps."""
    net = timm.create_model(backbone, pretrained=False, num_classes=0).eval()
    weights = {k.removeprefix("features."): v for k, v in state.items()
               if k.startswith("features.") and not k.startswith("features.head.")}
    net.load_state_dict(weights, strict=True)
    tokens = net.patch_embed(x)
    cls = net.cls_token.expand(x.shape[0], -1, -1)
    if backbone.startswith("deit"):  # cls first, position, blocks, norm
        tokens = net.norm(net.blocks(torch.cat([cls, tokens], dim=1) + net.pos_embed))
    else:  # position (patches only), blocks, class-attention blocks on the cls token, cls first, norm
        tokens = tokens + net.pos_embed
        for block in net.blocks:
            tokens = block(tokens)
        for block in net.blocks_token_only:
            cls = block(tokens, cls)
        tokens = net.norm(torch.cat([cls, tokens], dim=1))
    patches = tokens[:, 1:] - tokens[:, :1]
    side = math.isqrt(patches.shape[1])
    return patches.permute(0, 2, 1).reshape(x.shape[0], -1, side, side)


def official_logits(state: dict, z: torch.Tensor) -> torch.Tensor:
    """The official ``subpatch_dist`` (one 1x1 convolution per sub-prototype), ``greedy_distance`` (masked
    entries shifted by -1e5, the window around the last pick only) and slot-weighted ``last_layer``."""
    b, _, h, w = z.shape
    zn, protos = F.normalize(z, p=2, dim=1), F.normalize(state["prototype_vectors"], p=2, dim=1)
    sims = torch.stack([F.conv2d(zn, protos[:, :, i, None, None]).flatten(2) for i in range(K)], dim=-1)
    rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    values = torch.zeros(b, P, K)
    for n in range(b):
        for p in range(P):
            free_patch, free_sub = torch.ones(h * w, dtype=torch.bool), torch.ones(K, dtype=torch.bool)
            window = torch.ones(h * w, dtype=torch.bool)
            for _ in range(K):
                allowed = (free_patch & window)[:, None] & free_sub[None, :]
                masked = sims[n, p] + (~allowed).float() * -1e5
                patch, sub = divmod(int(masked.argmax()), K)
                values[n, p, sub] = sims[n, p, patch, sub]
                free_patch[patch], free_sub[sub] = False, False
                window = ((rows - rows[patch]).abs() <= RADIUS) & ((cols - cols[patch]).abs() <= RADIUS)
    slots = torch.sigmoid(state["patch_select"] * TEMP)
    scores = (values * slots * K / (slots.sum(-1, keepdim=True) + 1e-10)).sum(-1)
    return scores @ state["last_layer.weight"].T


@pytest.mark.parametrize("backbone", sorted(LAYOUTS))
def test_official_state_dict_loads_strictly_and_every_tensor_lands_in_its_place(backbone):
    state, cfg = official_state(backbone, head=backbone.startswith("deit")), config(backbone)
    assert SPEC.from_official is convert
    model = ProtoViT(cfg).eval()
    model.load_state_dict(convert(state, cfg), strict=True)

    # prototypes [P, D, K] sub-prototype last, slots [1, P, K], last layer [C, P]: one entry of each, then all
    assert torch.equal(model.prototype_vectors[4, :, 3], state["prototype_vectors"][4, :, 3])
    assert float(model.patch_select.detach()[0, 5, 1]) == float(state["patch_select"][0, 5, 1])
    assert float(model.last_layer.weight.detach()[2, 4]) == float(state["last_layer.weight"][2, 4])
    for key in ("prototype_vectors", "patch_select"):
        assert torch.equal(getattr(model, key), state[key])
    assert torch.equal(model.last_layer.weight, state["last_layer.weight"])
    # the backbone by identity; the classes j // (P / C); sources unknown
    ours = model.state_dict()
    for key in ("features.cls_token", "features.pos_embed", "features.patch_embed.proj.weight",
                "features.blocks.11.attn.qkv.weight", "features.norm.bias"):
        assert torch.equal(ours[key], state[key])
    assert model.prototype_classes.tolist() == [j // PER_CLASS for j in range(P)]
    assert model.prototype_sources.shape == (P, 3) and bool((model.prototype_sources == -1).all())
    assert model.prototype_source_cells.shape == (P, K) and bool((model.prototype_source_cells == -1).all())

    # and it computes what the official code computes from the official tensors
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.latent(x)
        torch.testing.assert_close(z, official_latent(backbone, state, model.normalize(x)))
        torch.testing.assert_close(model(x), official_logits(state, z))


def test_a_wrapped_state_dicts_module_prefix_is_stripped_and_ones_and_head_dropped():
    state, cfg = official_state("deit_tiny_patch16_224", head=True), config("deit_tiny_patch16_224")
    result = convert({"module." + k: v for k, v in state.items()}, cfg)
    assert "ones" not in result and not any(k.startswith(("module.", "features.head")) for k in result)
    assert torch.equal(result["prototype_vectors"], state["prototype_vectors"])
    assert torch.equal(result["features.blocks.3.mlp.fc2.weight"], state["features.blocks.3.mlp.fc2.weight"])


def test_a_wrong_shape_is_one_line_naming_the_official_key_and_what_ours_expects(one_line_error):
    cfg = config("deit_tiny_patch16_224")
    state = official_state("deit_tiny_patch16_224")
    state["patch_select"] = state["patch_select"].transpose(1, 2)  # [1, K, P]
    message = one_line_error(convert, state, cfg)
    assert f"'patch_select' has shape (1, {K}, {P})" in message and f"expects (1, {P}, {K})" in message

    state = official_state("deit_tiny_patch16_224")
    state["prototype_vectors"] = torch.rand(P, 192, K + 1)
    message = one_line_error(convert, state, cfg)
    assert f"'prototype_vectors' has shape ({P}, 192, {K + 1})" in message and "sub_prototypes 4" in message


def test_a_missing_key_is_one_line_naming_it(one_line_error):
    state, cfg = official_state("deit_tiny_patch16_224"), config("deit_tiny_patch16_224")
    del state["features.blocks.7.attn.proj.bias"]
    message = one_line_error(convert, state, cfg)
    assert "'features.blocks.7.attn.proj.bias' is missing" in message and "(192,)" in message
    del state["last_layer.weight"]
    assert "'last_layer.weight' is missing" in one_line_error(convert, state, cfg)


def test_another_backbones_keys_a_distilled_deit_and_a_backbone_without_official_code_are_refused(one_line_error):
    message = one_line_error(convert, official_state("cait_xxs24_224"), config("deit_tiny_patch16_224"))
    assert "'features.blocks.0.attn.proj_l.bias'" in message and "backbone other than" in message
    state = official_state("deit_tiny_patch16_224")
    state["features.dist_token"] = torch.zeros(1, 1, 192)
    assert "distilled DeiT" in one_line_error(convert, state, config("deit_tiny_patch16_224"))
    message = one_line_error(convert, state, config("protovit_micro_patch8_64") | {"input_size": 64})
    assert "no official ProtoViT checkpoint" in message and "deit_small_patch16_224" in message
