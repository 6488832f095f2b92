"""Stage 1 (methods.md B.2): the SupCon loss against hand-computed values, the paper's pairs, the batch
layout, the augmentations, and a short pretraining run whose checkpoint the encoder registry loads."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from slidemil.encoders import build_encoder
from slidemil.pretrain import (
    COARSE,
    FINE,
    MultiScaleBatches,
    MultiScaleSlide,
    PretrainConfig,
    ProjectionHead,
    augment,
    multiscale_pairs,
    pretrain,
    split_slides,
    supcon_loss,
)


def test_supcon_matches_hand_computed_values():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    # anchors 0 and 1: -log(e^1 / (e^1 + e^0)) = log(e + 1) - 1; anchor 2 has no positive
    expected = math.log(math.e + 1) - 1  # 0.31326
    assert float(supcon_loss(z, pos, tau=1.0)) == pytest.approx(expected, abs=1e-6)
    # tau 0.5 doubles the similarities: log(e^2 + 1) - 2
    assert float(supcon_loss(z, pos, tau=0.5)) == pytest.approx(math.log(math.e ** 2 + 1) - 2, abs=1e-6)
    # a denominator restricted to the positive: the loss is exactly 0
    assert float(supcon_loss(z, pos, contrast=pos, tau=1.0)) == pytest.approx(0.0, abs=1e-7)


def test_supcon_averages_over_positives_of_an_anchor():
    """Anchor 0 with two positives at cos 1 and cos 0 and one negative at cos -1 (tau 1):
    l_0 = -1/2 [ (1 - L) + (0 - L) ], L = log(e^1 + e^0 + e^-1); anchors 1 and 2 mirror it."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[0, 2] = True
    big = math.log(math.e + 1 + math.exp(-1))
    l0 = -0.5 * ((1 - big) + (0 - big))
    assert float(supcon_loss(z, pos, tau=1.0)) == pytest.approx(l0, abs=1e-6)
    with pytest.raises(ValueError, match="no anchor"):
        supcon_loss(z, torch.zeros(4, 4, dtype=torch.bool))


def test_multiscale_pairs_follow_the_paper():
    # slide 0 (class 0): parent A (place 0) + 2 children, parent B (place 1) + 1 child; slide 1 (class 1):
    # parent C (place 2) + 1 child
    slide = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    scale = torch.tensor([COARSE, FINE, FINE, COARSE, FINE, COARSE, FINE])
    place = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    label = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    pos, con = multiscale_pairs(slide, scale, place, label)
    assert pos[0].nonzero().ravel().tolist() == [1, 2, 3]  # own children + same-slide parent B
    assert pos[3].nonzero().ravel().tolist() == [0, 4]  # parent A + own child
    assert con[0].nonzero().ravel().tolist() == [1, 2, 3, 5]  # + other-class parent C, not its child
    assert pos[5].nonzero().ravel().tolist() == [6] and con[5].nonzero().ravel().tolist() == [0, 3, 6]
    assert not pos[[1, 2, 4, 6]].any() and not con[[1, 2, 4, 6]].any()  # children are not anchors
    pos2, con2 = multiscale_pairs(slide, scale, place, label, (COARSE, FINE))
    assert pos2[1].nonzero().ravel().tolist() == [0, 2, 4]  # its parent + the slide's other children
    assert con2[1].nonzero().ravel().tolist() == [0, 2, 4, 6]  # + the other class's child


def two_class_slides(n_per_class: int = 3, n_parents: int = 3, s: int = 2) -> list[MultiScaleSlide]:
    out = []
    for label in (0, 1):
        for k in range(n_per_class):
            children = np.arange(n_parents * s * s).reshape(n_parents, s * s)
            children[0, 0] = -1
            children[1] = -1  # parent 1 has no child left: never drawn
            out.append(MultiScaleSlide(f"c{label}_{k}", label, children))
    return out


def toy_reader(slides: list[MultiScaleSlide], px: int = 32):
    """Class 0 tiles dark and flat, class 1 bright and striped; children differ from parents slightly."""

    def read(i: int, name: str, row: int) -> np.ndarray:
        rng = np.random.default_rng([i, row, name == "parents"])
        base = 60.0 if slides[i].label == 0 else 180.0
        img = base + rng.normal(0, 10, size=(px, px, 3))
        if slides[i].label == 1:
            img[:, ::4] -= 80
        return np.clip(img, 0, 255).astype(np.uint8)

    return read


def test_batches_hold_parents_with_their_children_from_both_classes():
    slides = two_class_slides()
    batches = MultiScaleBatches(slides, toy_reader(slides), slides_per_batch=4, parents_per_slide=2,
                                children_per_parent=2)
    b = batches.sample(np.random.default_rng(0))
    assert set(b.label.tolist()) == {0, 1}
    for p in b.place.unique().tolist():
        members = b.place == p
        assert int((b.scale[members] == COARSE).sum()) == 1
        assert 1 <= int((b.scale[members] == FINE).sum()) <= 2
        assert b.slide[members].unique().numel() == 1
    assert b.tiles.shape[1:] == (32, 32, 3) and b.tiles.dtype == torch.uint8
    with pytest.raises(ValueError, match="two classes"):
        MultiScaleBatches(slides[:3], toy_reader(slides))


def test_single_scale_batches_and_loss_for_the_conventional_baseline():
    slides = two_class_slides()
    fine = MultiScaleBatches(slides, toy_reader(slides), children_per_parent=2, scales=(FINE,))
    b = fine.sample(np.random.default_rng(0))
    assert (b.scale == FINE).all() and set(b.label.tolist()) == {0, 1}
    pos, con = multiscale_pairs(b.slide, b.scale, b.place, b.label, (FINE,))
    same_slide = b.slide[:, None] == b.slide[None, :]
    assert torch.equal(pos, same_slide & ~torch.eye(len(b.slide), dtype=torch.bool))
    coarse = MultiScaleBatches(slides, toy_reader(slides), scales=(COARSE,)).sample(np.random.default_rng(0))
    assert (coarse.scale == COARSE).all() and coarse.place.unique().numel() == len(coarse.place)
    with pytest.raises(ValueError, match="scales"):
        PretrainConfig(scales="level1")


def test_augment_keeps_scale_and_content():
    gen = torch.Generator().manual_seed(0)
    tile = torch.arange(8 * 8 * 3, dtype=torch.uint8).reshape(1, 8, 8, 3).repeat(16, 1, 1, 1)
    out = augment(tile, gen, contrast=0.0)
    assert out.shape == tile.shape
    for t in out:  # no contrast change: a flip / rotation is a permutation of the pixels
        assert sorted(t.flatten().tolist()) == sorted(tile[0].flatten().tolist())
    assert any(not torch.equal(t, tile[0]) for t in out)


def test_projection_head_is_the_papers_and_normalised():
    head = ProjectionHead(512)
    dims = [(m.in_features, m.out_features) for m in head.net if isinstance(m, torch.nn.Linear)]
    assert dims == [(512, 1024), (1024, 1024), (1024, 256)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.net) == 2
    z = head(torch.randn(5, 512))
    np.testing.assert_allclose(z.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown PretrainConfig"):
        PretrainConfig.from_dict({"temprature": 0.1})
    with pytest.raises(ValueError, match="epochs"):
        PretrainConfig(epochs=0)
    assert PretrainConfig().temperature == 0.07 and PretrainConfig().lr == 1e-4


def test_split_keeps_each_class_on_both_sides():
    fit, val = split_slides(two_class_slides(), 0.2, np.random.default_rng(0))
    assert len(val) == 2 and len(fit) == 4 and not set(fit) & set(val)


def test_pretrain_lowers_val_loss_and_registers_a_loadable_encoder(tmp_path):
    torch.set_num_threads(1)
    slides = two_class_slides(n_per_class=3)
    cfg = PretrainConfig(encoder="resnet18", epochs=2, steps_per_epoch=6, val_batches=2, slides_per_batch=4,
                         parents_per_slide=2, children_per_parent=2, lr=0.01, momentum=0.9, head_hidden=64,
                         head_out=16, input_px=32, temperature=0.5, val_fraction=0.34)
    res = pretrain(slides, toy_reader(slides), cfg, tmp_path)
    assert res.record["probe"] is None  # off by default
    rec = json.loads((tmp_path / "encoder.json").read_text())
    assert rec["weights_id"].startswith("checkpoint:") and rec["name"] == "resnet18"
    assert not set(rec["fit_slides"]) & set(rec["val_slides"])
    assert rec["best_val_loss"] < rec["initial_val_loss"]  # training lowered the validation loss
    assert min(h["val_loss"] for h in rec["history"]) == rec["best_val_loss"]
    enc = build_encoder("resnet18", str(res.checkpoint))
    assert enc.weights_id == rec["weights_id"]
    start = build_encoder("resnet18", "random")
    assert any(not torch.equal(a, b) for a, b in zip(enc.state_dict().values(), start.state_dict().values(),
                                                     strict=True))


def test_pretrain_keeps_the_start_weights_when_training_never_beats_them(tmp_path):
    """"Keep the lowest-validation-loss encoder": the start weights are a candidate, so a run that only makes
    things worse (here a learning rate that wrecks the encoder) writes the start backbone back."""
    torch.set_num_threads(1)
    slides = two_class_slides(n_per_class=3)
    cfg = PretrainConfig(encoder="resnet18", epochs=1, steps_per_epoch=2, val_batches=2, slides_per_batch=4,
                         parents_per_slide=2, children_per_parent=2, lr=1e4, momentum=0.9, head_hidden=64,
                         head_out=16, input_px=32, temperature=0.5, val_fraction=0.34)
    res = pretrain(slides, toy_reader(slides), cfg, tmp_path)
    rec = res.record
    assert not rec["history"][0]["val_loss"] < rec["initial_val_loss"]  # training made it worse (or NaN)
    assert rec["best_epoch"] == -1 and rec["best_val_loss"] == rec["initial_val_loss"]
    kept = build_encoder("resnet18", str(res.checkpoint)).backbone.state_dict()
    start = build_encoder("resnet18", "random").backbone.state_dict()
    conv = [k for k in start if k.endswith("conv1.weight")]
    assert conv and all(torch.equal(kept[k], start[k]) for k in conv)  # convolutions untouched by the bad run


def test_pretrain_stage_uses_only_training_slides_of_the_chosen_folds():
    import pandas as pd

    from pipelines.pretrain import training_only
    from slidemil.data.splits import SplitConfig, make_splits

    slides = pd.DataFrame([{"slide_id": f"c{c}_{k}", "case_id": f"c{c}", "label": ["a", "b"][c % 2]}
                           for c in range(12) for k in range(2)])
    cfg = {"mode": "monte_carlo", "folds": 3, "val_frac": 0.2, "test_frac": 0.2, "seed": 0}
    splits = make_splits(slides, SplitConfig(**cfg))
    keep, clean = training_only(slides, cfg)
    held_out = set(splits.loc[splits.split != "train", "slide_id"])
    assert keep and not set(keep) & held_out and clean == [0, 1, 2]
    assert set(keep) | held_out == set(slides["slide_id"])
    keep0, clean0 = training_only(slides, cfg, [0])
    fold0 = splits[splits.fold == 0]
    assert set(keep0) == set(fold0.loc[fold0.split == "train", "slide_id"])
    assert 0 in clean0 and len(keep0) > len(keep)
    for f in set(range(3)) - set(clean0):  # a fold is clean only if the encoder saw none of its held-out slides
        g = splits[splits.fold == f]
        assert set(g.loc[g.split != "train", "slide_id"]) & set(keep0)


def test_linear_probe_auc_separates_and_refuses_one_class():
    from slidemil.pretrain.probe import linear_probe_auc

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    signal = rng.normal(size=(40, 3)) + y[:, None] * 4.0
    assert linear_probe_auc(signal, y, signal + 0.1, y) == pytest.approx(1.0)
    noise_fit, noise_val = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    assert 0.2 < linear_probe_auc(noise_fit, y, noise_val, y) < 0.8
    assert math.isnan(linear_probe_auc(signal, y, signal[:20], y[:20]))


def test_pretrain_records_the_probe_of_start_and_trained_encoder(tmp_path):
    torch.set_num_threads(1)
    slides = two_class_slides(n_per_class=3)
    cfg = PretrainConfig(encoder="resnet18", epochs=1, steps_per_epoch=2, val_batches=1, bn_batches=1,
                         children_per_parent=2, lr=0.01, head_hidden=32, head_out=8, input_px=32,
                         val_fraction=0.34, probe_tiles_per_slide=4)
    rec = pretrain(slides, toy_reader(slides), cfg, tmp_path, n_tiles=[12] * len(slides)).record
    probe = rec["probe"]
    again = pretrain(slides, toy_reader(slides), replace(cfg, probe_tiles_per_slide=0), tmp_path / "again")
    assert again.record["weights_id"] == rec["weights_id"]  # same data and seed: the same checkpoint file
    assert (probe["n_fit_tiles"], probe["n_val_tiles"]) == (16, 8)
    assert 0.0 <= probe["start_auc"] <= 1.0 and 0.0 <= probe["trained_auc"] <= 1.0


def test_ground_truth_tile_labels_on_a_hand_made_mask():
    """Four 100-px tiles over a mask (downsample 10) whose tumour covers tile 0 fully, 60 % of tile 1, 30 % of
    tile 2 and none of tile 3: a tumour slide keeps tiles 0 and 1 as its class, a normal slide keeps all."""
    from slidemil.evaluation.localisation import tile_tumour_fraction
    from slidemil.pretrain.probe import ground_truth_tile_labels

    mask = np.zeros((10, 40), dtype=bool)  # 10 level-0 px per mask px: the four tiles side by side
    mask[:, 0:10] = True
    mask[:, 10:16] = True
    mask[:, 20:23] = True
    coords = np.array([[0, 0], [100, 0], [200, 0], [300, 0]])
    frac = tile_tumour_fraction(coords, 100, mask, 10.0)
    np.testing.assert_allclose(frac, [1.0, 0.6, 0.3, 0.0])
    assert ground_truth_tile_labels(2, 0, frac, 4).tolist() == [2, 2, -1, -1]
    assert ground_truth_tile_labels(2, 0, frac, 4, threshold=0.25).tolist() == [2, 2, 2, -1]
    assert ground_truth_tile_labels(0, 0, frac, 4).tolist() == [0, 0, 0, 0]  # normal slide: every tile
    assert ground_truth_tile_labels(1, 0, None, 3).tolist() == [-1, -1, -1]  # tumour slide, no mask
    with pytest.raises(ValueError):
        ground_truth_tile_labels(1, 0, frac, 5)


def test_tumour_grid_covers_the_tumour_with_shifted_tiles():
    """A 20x20-mask-px tumour (ds 10: 200 level-0 px) at mask (30, 40): a stride-25 grid of 100-px tiles gives
    every corner whose tile overlaps the tumour's box, and 69 of them are >= 50 % tumour (vs 4 on the
    100-px tiling grid)."""
    from slidemil.evaluation.localisation import tile_tumour_fraction
    from slidemil.pretrain.probe import ground_truth_tile_labels, tumour_grid

    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 30:50] = True
    grid = tumour_grid(mask, 10.0, 100, 25)
    assert grid[:, 0].min() == 225 and grid[:, 0].max() == 475 and grid[:, 1].min() == 325
    labels = ground_truth_tile_labels(1, 0, tile_tumour_fraction(grid, 100, mask, 10.0), len(grid))
    # per axis the 11 corners overlap 25, 50, 75, 100 x5, 75, 50, 25 px: pairs with product >= 5000 px^2
    assert (labels == 1).sum() == 5 * 9 + 2 * 7 + 2 * 5
    assert tumour_grid(np.zeros((5, 5), dtype=bool), 10.0, 100, 25).shape == (0, 2)


def test_balanced_picks_equalise_classes_and_spread_over_slides():
    from slidemil.pretrain.probe import balanced_picks

    labels = [np.array([0] * 50), np.array([0] * 5), np.array([1, 1, -1, 1, -1, 1]), np.array([2] * 3 + [-1] * 9)]
    picks, y = balanced_picks(labels, 100, np.random.default_rng(0))
    assert np.bincount(y).tolist() == [3, 3, 3]  # the rarest class (2: three tiles) sets the count
    assert all(labels[i][r] == c for (i, r), c in zip(picks, y, strict=True))
    assert {i for (i, _), c in zip(picks, y, strict=True) if c == 0} == {0, 1}  # both normal slides used
    picks, y = balanced_picks(labels, 2, np.random.default_rng(0))
    assert np.bincount(y).tolist() == [2, 2, 2] and len(set(picks)) == 6


def test_linear_probe_reports_auc_and_balanced_accuracy():
    from slidemil.pretrain.probe import linear_probe

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 8)) + 3.0 * np.eye(8)[y]
    res = linear_probe(x, y, x + rng.normal(scale=0.1, size=x.shape), y)
    assert res["auc"] > 0.99 and res["balanced_accuracy"] > 0.95
    noise = linear_probe(rng.normal(size=(90, 8)), y, rng.normal(size=(90, 8)), y)
    assert 0.2 < noise["auc"] < 0.8 and noise["balanced_accuracy"] < 0.6
