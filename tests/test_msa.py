"""MSA (methods.md section B): the attention block's masking, shapes, the bag builder's counts, vote vs mean,
and the explanation layers' coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemil.methods import SlideData, TileSetView, get_method, random_parent_bags
from slidemil.methods.msa import child_attention_map, merge_bags
from slidemil.models.msa import MSAConfig, MSAModel, MultiScaleAttention


def small_config(**over) -> MSAConfig:
    base = {"in_dim": 6, "parent_dim": 5, "n_classes": 3, "n_bags": 7, "bag_size": 4, "d_model": 16,
            "heads": 4}
    return MSAConfig(**{**base, **over})


def grid_slide(n_parents: int = 5, s: int = 4, label: int | None = 1, seed: int = 0) -> SlideData:
    """``n_parents`` parents in a row, each with s*s children; parent 0 loses children 3 and 7."""
    rng = np.random.default_rng(seed)
    n_tiles = n_parents * s * s
    children = np.arange(n_tiles).reshape(n_parents, s * s)
    children[0, [3, 7]] = -1
    coords = np.stack([np.arange(n_tiles) * 10, np.zeros(n_tiles)], 1).astype(np.int64)
    p_coords = np.stack([np.arange(n_parents) * 40, np.zeros(n_parents)], 1).astype(np.int64)
    return SlideData("s", label,
                     {"tiles": TileSetView(coords, 10), "parents": TileSetView(p_coords, 40, children)},
                     {"tiles": rng.normal(size=(n_tiles, 6)).astype(np.float32),
                      "parents": rng.normal(size=(n_parents, 5)).astype(np.float32)})


def test_attention_sums_to_one_over_children_and_missing_child_gets_zero():
    torch.manual_seed(0)
    block = MultiScaleAttention(parent_dim=5, child_dim=6, d_model=16, heads=4, d_k=4)
    parents, tiles = torch.randn(3, 5), torch.randn(40, 6)
    children = torch.arange(48).reshape(3, 16) % 40
    children[1, [0, 5, 15]] = -1
    children[2] = -1  # a parent whose children all fell out
    out, attn = block(parents, tiles, children)
    assert out.shape == (3, 5) and attn.shape == (3, 4, 16)
    np.testing.assert_allclose(attn[:2].sum(-1).detach().numpy(), 1.0, atol=1e-6)
    assert (attn[1, :, [0, 5, 15]] == 0).all()  # exactly zero, not just small
    assert (attn[1, :, 1] > 0).all()
    assert (attn[2] == 0).all()
    torch.testing.assert_close(out[2], parents[2])  # no children: no update


def test_missing_child_features_do_not_change_the_output():
    torch.manual_seed(1)
    block = MultiScaleAttention(5, 6, 16, 2, 8)
    parents, tiles = torch.randn(1, 5), torch.randn(4, 6)
    moved = tiles.clone()
    moved[0] += 100.0  # row 0 is what a -1 slot gathers before masking
    missing = torch.tensor([[2, 1, -1, 3]])
    torch.testing.assert_close(block(parents, tiles, missing)[0], block(parents, moved, missing)[0])
    present = torch.tensor([[0, 1, -1, 3]])  # the same change through a present child does matter
    assert not torch.allclose(block(parents, tiles, present)[0], block(parents, moved, present)[0])


def test_head_dim_follows_d_model_over_heads_unless_set():
    assert MSAConfig().d_k == 512  # 2048 / 4
    assert MSAConfig(head_dim=128).d_k == 128  # the paper's literal d_k
    with pytest.raises(ValueError, match="divisible"):
        MSAConfig(d_model=10, heads=4)
    with pytest.raises(ValueError, match="unknown MSAConfig"):
        MSAConfig.from_dict({"bag_sise": 3})


def test_model_output_shapes_and_bag_size_check():
    cfg = small_config()
    model = MSAModel(cfg)
    slide = grid_slide()
    bags = random_parent_bags(slide, cfg.n_bags, cfg.bag_size, np.random.default_rng(0))
    parents, tiles, children, rows = merge_bags(bags)
    out = model(parents, tiles, children, rows)
    assert out.logits.shape == (7, 3)
    assert out.attention.shape == (parents.shape[0], 4, 16)
    assert rows.shape == (7, 4) and int(rows.max()) < parents.shape[0] <= 5
    with pytest.raises(ValueError, match="predictor was built for 4"):
        model.classify(out.parents, rows[:, :3])


def test_merge_bags_keeps_each_parent_with_its_own_children():
    slide = grid_slide()
    bags = random_parent_bags(slide, 6, 4, np.random.default_rng(3))
    parents, tiles, children, rows = merge_bags(bags)
    relation = slide.tile_sets["parents"].children
    for bag, r in zip(bags, rows, strict=True):
        for slot, slide_row in enumerate(bag.index["parents"].tolist()):
            p = int(r[slot])
            np.testing.assert_array_equal(parents[p].numpy(), slide.features["parents"][slide_row])
            for j, child in enumerate(relation[slide_row]):
                if child < 0:
                    assert children[p, j] == -1
                else:
                    np.testing.assert_array_equal(tiles[children[p, j]].numpy(), slide.features["tiles"][child])


def test_bag_builder_counts_training_and_fixed_inference_bags():
    method = get_method("msa")(small_config(n_bags=50, bag_size=100))
    slide = grid_slide(n_parents=5)
    rng = np.random.default_rng(0)
    train = method.bags(slide, training=True, rng=rng)
    assert len(train) == 50 and all(b.tokens["parents"].shape == (100, 5) for b in train)
    assert all(b.children.shape == (100, 16) for b in train)
    again = method.bags(slide, training=True, rng=rng)
    assert any(not torch.equal(a.index["parents"], b.index["parents"]) for a, b in zip(train, again, strict=True))
    inf1 = method.bags(slide, training=False, rng=np.random.default_rng(1))
    inf2 = method.bags(slide, training=False, rng=np.random.default_rng(2))
    for a, b in zip(inf1, inf2, strict=True):  # the caller's generator is ignored at inference
        assert torch.equal(a.index["parents"], b.index["parents"])
    big = grid_slide(n_parents=120)
    drawn = method.bags(big, training=True, rng=rng)[0].index["parents"]
    assert len(set(drawn.tolist())) == 100  # enough parents: without replacement


def test_vote_and_mean_can_disagree():
    """Bags voting 4 x class 0 at p=0.55 and 3 x class 1 at p=0.95: the vote says 0, the mean says 1."""
    method = get_method("msa")(small_config(n_classes=2))
    slide = grid_slide()
    logits = torch.log(torch.tensor([[0.55, 0.45]] * 4 + [[0.05, 0.95]] * 3))

    class Fixed(MSAModel):
        def forward(self, *args):
            out = super().forward(*args)
            out.logits = logits
            return out

    pred = method.predict(Fixed(method.config), slide)
    np.testing.assert_allclose(pred.votes, [4 / 7, 3 / 7])
    np.testing.assert_allclose(pred.probs, [(4 * 0.55 + 3 * 0.05) / 7, (4 * 0.45 + 3 * 0.95) / 7], atol=1e-6)
    assert pred.vote_index == 0 and pred.label_index == 1


def test_explain_covers_every_kept_child_and_every_parent():
    method = get_method("msa")(small_config())
    slide = grid_slide(n_parents=9)
    model = method.build_model().eval()
    child, parent = method.explain(model, slide, 2, ["a", "b", "c"])
    assert (child.tile_set, child.kind, parent.tile_set, parent.kind) == ("tiles", "attention", "parents",
                                                                         "contribution")
    values = child.values.reshape(9, 16)
    np.testing.assert_allclose(values[1:].sum(1), 1.0, atol=1e-6)  # per parent: the attention sums to 1
    np.testing.assert_allclose(values[0].sum(), 1.0, atol=1e-6)
    assert values[0, 3] == 0 and values[0, 7] == 0  # dropped children: not a child of any parent
    assert (values[1:] > 0).all()
    assert parent.values.shape == (9,) and np.isfinite(parent.values).all() and np.abs(parent.values).sum() > 0


def test_child_attention_map_averages_shared_children():
    children = np.array([[0, 1], [1, -1]])
    attention = np.array([[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_allclose(child_attention_map(attention, children, 3), [0.25, 0.875, 0.0])


def test_resolve_config_needs_parents_and_fills_both_dims():
    cls = get_method("msa")
    with pytest.raises(ValueError, match="features.tile_sets"):
        cls.resolve_config({}, n_classes=2, feature_dims={"tiles": 8})
    cfg = cls.resolve_config({"n_bags": 3}, n_classes=2, feature_dims={"tiles": 8, "parents": 12})
    assert (cfg["in_dim"], cfg["parent_dim"], cfg["n_bags"], cfg["bag_size"]) == (8, 12, 3, 100)
    assert cls(cfg).input_dims() == {"tiles": 8, "parents": 12}


def test_one_sgd_step_lowers_the_loss_on_a_fixed_bag_set():
    torch.manual_seed(0)
    method = get_method("msa")(small_config(n_classes=2, momentum=0.9))
    slide = grid_slide(label=1)
    model = method.build_model()
    opt = method.configure_optimizers(model, lr=0.01, weight_decay=0.0)
    assert isinstance(opt, torch.optim.SGD)
    bags = method.bags(slide, training=False)
    first = float(method.training_loss(model, bags)[0].detach())
    for _ in range(5):
        opt.zero_grad()
        loss, _ = method.training_loss(model, bags)
        loss.backward()
        opt.step()
    assert float(method.training_loss(model, bags)[0].detach()) < first


def test_ablation_fusions_concat_and_parent_only():
    """``concat``: the token is [parent, mean of its present children] (parent 0's two dropped children do
    not count); ``parent``: the parent alone - children never change the output; neither has an MSA block
    nor a fine-scale map."""
    slide = grid_slide()
    children = torch.from_numpy(slide.tile_sets["parents"].children)
    parents = torch.from_numpy(slide.features["parents"])
    tiles = torch.from_numpy(slide.features["tiles"])
    concat = MSAModel(small_config(fusion="concat")).eval()
    token, attn = concat.attend(parents, tiles, children)
    kept = [i for i in range(16) if i not in (3, 7)]
    torch.testing.assert_close(token[0], torch.cat([parents[0], tiles[kept].mean(0)]))
    torch.testing.assert_close(token[2], torch.cat([parents[2], tiles[32:48].mean(0)]))
    assert not hasattr(concat, "msa") and float(attn.abs().sum()) == 0.0

    alone = MSAModel(small_config(fusion="parent")).eval()
    rows = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    shuffled = tiles[torch.randperm(len(tiles))]
    torch.testing.assert_close(alone(parents, tiles, children, rows).logits,
                               alone(parents, shuffled, children, rows).logits)
    layers = get_method("msa")(small_config(fusion="parent")).explain(alone, grid_slide(), 1, ["a", "b", "c"])
    assert [la.name for la in layers] == ["parent_contribution"]
    with pytest.raises(ValueError, match="fusion must be one of"):
        small_config(fusion="sum")


@pytest.mark.slow
def test_served_msa_bundle_returns_the_fine_scale_heatmap(tmp_path):
    """A new slide through the serving path (tiling with parents, both tile sets encoded, the MSA model): the
    painted layer is the child attention on ``tiles`` (the paper's Fig. 4 map), the parent contributions ride
    along, and the PNG is a real image."""
    import io

    from PIL import Image

    from slidemil.bundle import ModelBundle
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide
    from slidemil.inference import SlidePredictor

    slide = generate_slide(SyntheticSlideSpec("msa_slide", "c1", "subtype_a", 2400, 2000, 0.5, seed=3,
                                              tumour_fraction=0.2, tissue_coverage=0.7, n_tissue_pieces=1),
                           tmp_path)["slide"]
    torch.manual_seed(0)
    cfg = {"in_dim": 512, "parent_dim": 512, "n_classes": 2, "n_bags": 4, "bag_size": 4, "d_model": 64}
    bundle = ModelBundle.create("msa", cfg, ["a", "b"], {"name": "resnet18", "weights": "random",
                                                         "feature_dim": 512},
                                {"tile_px": 224, "target_mpp": 1.0, "multiscale_factor": 2},
                                tile_sets=("tiles", "parents"), heatmap={"canvas_max_side": 512})
    out = SlidePredictor(bundle, batch_size=16).predict(slide, top_k=2)
    layers = {la.name: la for la in out.scored.layers}
    assert out.scored.primary.name == "child_attention" and out.scored.primary.tile_set == "tiles"
    assert layers["parent_contribution"].tile_set == "parents"
    child = layers["child_attention"].values
    assert len(child) == out.n_tiles and child.max() > 0 and np.isfinite(child).all()
    assert sum(out.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    image = Image.open(io.BytesIO(out.heatmap_png))
    assert max(image.size) >= 256 and len(out.top_tiles) == 2
