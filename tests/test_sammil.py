"""SAM-MIL's parts against hand-computed values: the masking ratio r(A), SAM-guided masking, the spatial
consistency loss (linear-memory form == the pairwise definition, 50k tiles), group tokens (appended, never
masked, never scored), the objective's weights and the optimiser schedule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from slidemil.methods import get_method
from slidemil.methods.sammil import (
    SamMILConfig,
    consistency_loss,
    group_mask,
    group_tokens,
    mask_ratio,
    segment_pairs,
)
from slidemil.segmenters import Segments, from_groups
from tests.test_method_contract import DIM, synthetic_slide

CFG = SamMILConfig(in_dim=DIM, n_classes=2)


def test_mask_ratio_hand_values():
    np.testing.assert_allclose(mask_ratio([5000.0, 0.0, 10000.0, 1e7], CFG),
                               [0.45, 0.9 / (1 + math.exp(2.5)), 0.9 / (1 + math.exp(-2.5)), 0.9], rtol=1e-12)
    assert mask_ratio(0.0, CFG) == pytest.approx(0.0682724, abs=1e-7)
    assert mask_ratio(10000.0, CFG) == pytest.approx(0.8317276, abs=1e-7)


def test_group_mask_drops_round_r_of_each_group():
    big, small = np.arange(0, 10), np.arange(10, 20)
    seg = from_groups(21, [big, small, np.array([9, 10])], [1e7, 0.0, 5000.0], 1.0)  # tile 20: sentinel
    keep = group_mask(seg, CFG, np.random.default_rng(0))
    # big: round(0.9 * 10) = 9 dropped; small: round(0.068 * 10) = 1; shared {9, 10}: round(0.45 * 2) = 1;
    # sentinel (area 1, one tile): round(0.068) = 0
    assert (~keep[big]).sum() >= 9 and (~keep[small]).sum() >= 1 and keep[20]
    assert (~keep).sum() <= 9 + 1 + 1
    for seed in range(20):  # exactly round(r * n) per group, union over overlapping groups
        keep = group_mask(seg, CFG, np.random.default_rng(seed))
        assert 9 <= (~keep[big]).sum() <= 10 and 1 <= (~keep[small]).sum() <= 2


def test_group_mask_keeps_one_tile():
    seg = from_groups(3, [np.arange(3)], [1e9], 1.0)
    cfg = replace(CFG, mask_max_ratio=0.99)
    assert group_mask(seg, cfg, np.random.default_rng(0)).sum() == 1


def _pairwise(attention: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The definition, term by term: every (i, S) with |S| >= 2 adds sqrt(sum_j in S (a_i - a_j)^2)."""
    terms = []
    for s in pairs[:, 1].unique():
        members = pairs[pairs[:, 1] == s, 0]
        if members.numel() < 2:
            continue
        a = attention[members]
        terms.append(torch.sqrt(((a[:, None] - a[None, :]) ** 2).sum(1)))
    return torch.cat(terms).mean()


def test_consistency_loss_hand_value():
    a = torch.tensor([0.1, 0.2, 0.4, 0.3])
    pairs = torch.tensor([[0, 0], [1, 0], [2, 0], [2, 1], [3, 1], [3, 2]])  # S2 = {3}: too small
    expected = (math.sqrt(0.10) + math.sqrt(0.05) + math.sqrt(0.13) + 0.1 + 0.1) / 5
    assert float(consistency_loss(a, pairs)) == pytest.approx(expected, rel=1e-6)
    assert float(_pairwise(a, pairs)) == pytest.approx(expected, rel=1e-6)
    assert float(consistency_loss(a, torch.tensor([[0, 0], [1, 1]]))) == 0.0  # no group of 2


def test_consistency_loss_equals_pairwise_with_gradients():
    gen = torch.Generator().manual_seed(0)
    n, g = 600, 25
    raw = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    member = torch.randint(0, g, (n,), generator=gen)
    extra = torch.randint(0, g, (n // 3,), generator=gen)
    pairs = torch.unique(torch.cat([torch.stack([torch.arange(n), member], 1),
                                    torch.stack([torch.arange(n // 3), extra], 1)]), dim=0)
    fast = consistency_loss(torch.softmax(raw, 0), pairs)
    (g_fast,) = torch.autograd.grad(fast, raw)
    slow = _pairwise(torch.softmax(raw, 0), pairs)
    (g_slow,) = torch.autograd.grad(slow, raw)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-7, atol=1e-12)


def test_consistency_loss_on_50k_tiles_in_linear_memory():
    n = 50_000  # one 50k-tile region: the pairwise matrix alone would be 10 GB in float32
    a = torch.softmax(torch.randn(n), 0).requires_grad_()
    pairs = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], 1)
    loss = consistency_loss(a, pairs)
    loss.backward()
    # closed form for one group: sqrt(n * ((a_i - mean)^2 + var))
    d = a.detach().double() - a.detach().double().mean()
    expected = torch.sqrt(n * (d * d + (d * d).mean())).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and torch.isfinite(a.grad).all()


def _method_and_slide(label: int = 1):
    method = get_method("sam_mil")(SamMILConfig(in_dim=DIM, n_classes=2))
    slide = replace(synthetic_slide("s", label, np.random.default_rng(3)), label=label)
    return method, slide


def test_group_tokens_are_segment_means_never_masked_never_scored():
    method, slide = _method_and_slide()
    seg: Segments = slide.layers["segments"]
    main, *pbs = method.bags(slide, training=True, rng=np.random.default_rng(0))
    feats = torch.from_numpy(slide.features["tiles"])
    tokens = main.tokens["groups"]
    assert tokens.shape == (seg.n_segments, DIM)  # the sentinel has no token
    pairs = segment_pairs(seg)
    for s in range(seg.n_segments):
        torch.testing.assert_close(tokens[s], feats[pairs[pairs[:, 1] == s, 0]].mean(0))
    torch.testing.assert_close(group_tokens(feats, seg), tokens)
    assert set(main.masks) == {"tiles"} and main.masks["tiles"].shape == (slide.n_tiles(),)
    assert 0 < int(main.masks["tiles"].sum()) < slide.n_tiles()
    assert len(pbs) == 5 and sum(p.tokens["tiles"].shape[0] for p in pbs) == slide.n_tiles()
    assert all(p.tokens["groups"] is tokens and p.label == slide.label for p in pbs)

    model = method.build_model().eval()
    (layer,) = method.explain(model, slide, 1, ["normal", "tumour"])
    assert layer.tile_set == "tiles" and len(layer.values) == slide.n_tiles()
    with torch.inference_mode():
        _, raw = model(feats, tokens)
    assert raw.shape[0] == slide.n_tiles() + seg.n_segments
    np.testing.assert_allclose(layer.values, raw[: slide.n_tiles()].numpy(), rtol=1e-6)


def test_objective_is_ce_plus_weighted_pseudo_bag_and_consistency():
    method, slide = _method_and_slide()
    torch.manual_seed(0)
    model = method.build_model().eval()  # no dropout: the parts can be recomputed
    method.fit_data_statistics(model, [slide])
    bags = method.bags(slide, training=True, rng=np.random.default_rng(1))
    loss, parts = method.training_loss(model, bags)
    assert float(loss.detach()) == pytest.approx(parts["ce"] + 0.5 * parts["pb_loss"] + 1000 * parts["cons_loss"], rel=1e-5)
    main = bags[0]
    logits, _ = model(main.tokens["tiles"][main.masks["tiles"]], main.tokens["groups"])
    ce = torch.nn.functional.cross_entropy(logits[None], torch.tensor([1]))
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-6)
    assert parts["cons_loss"] > 0 and 0 < parts["masked_fraction"] < 1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_optimiser_selection_and_missing_layer():
    method, slide = _method_and_slide()
    opt = method.configure_optimizers(method.build_model(), 2e-4, 1e-5)
    sched = opt["lr_scheduler"]["scheduler"]
    assert isinstance(opt["optimizer"], torch.optim.Adam) and opt["optimizer"].defaults["weight_decay"] == 1e-5
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 200
    assert (method.monitor, method.mode) == ("val_auc", "max")
    assert "segments:tiles" in [str(s) for s in method.required_layers]
    with pytest.raises(ValueError, match="segment stage"):
        method.bags(replace(slide, layers={}), training=False)
    with pytest.raises(ValueError, match="unknown SamMILConfig"):
        SamMILConfig.from_dict({"k_sample": 8})


def test_params_section_is_the_papers_defaults():
    import yaml

    from tests.test_method_contract import ROOT

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["methods"]["sam_mil"]
    resolved = get_method("sam_mil").resolve_config(section, n_classes=3, feature_dims={"tiles": 512})
    assert resolved == {**SamMILConfig().to_dict(), "n_classes": 3, "in_dim": 512}
    assert "sam_mil" in yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["models"]  # in the demo


def test_serving_segments_a_new_slide_like_the_segment_stage(slides_dir):
    """A sam_mil bundle served on a slide it never saw: the predictor segments the slide with the bundle's
    segmenter and settings (the same ``SlideInput.from_tissue`` + ``segment`` the stage runs), so its answer
    equals scoring those tiles with the stage's segments - and differs from scoring without regions."""
    from slidemil.bundle import ModelBundle
    from slidemil.features.extract import TileDataset, encode_tiles
    from slidemil.inference import SlidePredictor
    from slidemil.methods import SlideData, TileSetView
    from slidemil.scoring import BundleScorer
    from slidemil.segmenters.base import SlideInput
    from slidemil.segmenters.registry import build_segmenter
    from slidemil.slides import open_slide
    from slidemil.slides.tiling import TilingParams, tile_slide
    from slidemil.slides.tissue import TissueParams
    from slidemil.slides.tissue_qc import contours_to_geojson

    slide = slides_dir / "CMU-1-Small-Region.svs"
    torch.manual_seed(0)
    tiling = {"tile_px": 224, "target_mpp": 1.0}
    bundle = ModelBundle.create("sam_mil", {"in_dim": 512, "n_classes": 2}, ["a", "b"],
                                {"name": "resnet18", "weights": "random", "feature_dim": 512}, tiling)
    with pytest.raises(ValueError, match="records no segmenter"):
        SlidePredictor(bundle)
    settings = {"n_clusters": 4, "seed": 0, "max_side": 512}
    bundle.spec.components.segmenter = {"id": "kmeans", "settings": settings}
    predictor = SlidePredictor(bundle, batch_size=16)
    served = predictor.predict(slide, heatmap=False)
    assert served.timings["segments"] > 0

    with open_slide(slide) as reader:
        seg, (tiles, *_) = tile_slide(reader, TilingParams.from_dict(tiling), TissueParams())
        feats = encode_tiles(TileDataset(reader.path, reader.mpp, tiles.coords, tiles.geometry,
                                         reader_factory=lambda p, m: reader),
                             predictor.encoders["tiles"], batch_size=16, num_workers=0)
        segments, _ = build_segmenter("kmeans", {"kmeans": settings}).segment(SlideInput.from_tissue(
            reader.slide_id, tiles.coords, tiles.geometry.level0_px, contours_to_geojson(seg, reader.slide_id),
            reader, feats))
    assert segments.n_segments >= 2
    view = {"tiles": TileSetView(tiles.coords, tiles.geometry.level0_px)}
    scorer = BundleScorer(bundle)
    staged = scorer.score(SlideData(reader.slide_id, None, view, {"tiles": feats}, {"segments": segments}),
                          explain=False)
    assert served.scored.probabilities == pytest.approx(staged.probabilities, abs=1e-5)
    no_regions = from_groups(len(tiles.coords), [], [], 1.0)
    alone = scorer.score(SlideData(reader.slide_id, None, view, {"tiles": feats}, {"segments": no_regions}),
                         explain=False)
    assert max(abs(alone.probabilities[c] - staged.probabilities[c]) for c in ("a", "b")) > 1e-4
