"""MIL models of methods.md section A: smooth SVM loss, CLAM-SB/MB, ABMIL, pooling baselines."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slidemil.methods import available_methods, build_method, get_method, register_method
from slidemil.methods.mil import ABMILMethod
from slidemil.methods.registry import _REGISTRY
from slidemil.models import (
    ClamConfig,
    ClamMB,
    ClamSB,
    MILConfig,
    SmoothTop1SVM,
    hard_top1_hinge,
    hinge_tolerance,
    select_pseudo_labels,
    smooth_top1_svm,
)

D = 32  # small feature size keeps the model tests fast; the default 1024 is covered separately


def cfg(**kw) -> ClamConfig:
    """CLAM's config (a superset of MILConfig, so it also builds ABMIL and pooling)."""
    return ClamConfig(**{"in_dim": D, **kw})


def build_model(name: str, config) -> nn.Module:
    """The model a registered method builds from ``config``."""
    return build_method(name, config).build_model()


# ----------------------------------------------------------------------------------------------- SVM loss


def test_svm_hand_computed_values():
    # u = [0, 0] -> ln 2
    assert smooth_top1_svm(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(math.log(2))
    # y = 1: u = [2 + 1 - 0.5, 0] = [2.5, 0] -> ln(e^2.5 + 1)
    val = smooth_top1_svm(torch.tensor([[2.0, 0.5]]), torch.tensor([1])).item()
    assert val == pytest.approx(2.5 + math.log1p(math.exp(-2.5)), rel=1e-6)  # 2.578869...
    assert val == pytest.approx(2.578889, abs=1e-6)
    # 3 classes, alpha 1, tau 0.5, y = 1: u = [0, 0, -1.5] -> 0.5 ln(2 + e^-3)
    val3 = SmoothTop1SVM(alpha=1.0, tau=0.5)(torch.tensor([[0.5, 1.5, -1.0]]), torch.tensor([1])).item()
    assert val3 == pytest.approx(0.5 * math.log(2 + math.exp(-3)), rel=1e-6)  # 0.371063...
    # batch mean of the first two
    both = smooth_top1_svm(torch.tensor([[1.0, 0.0], [2.0, 0.5]]), torch.tensor([0, 1])).item()
    assert both == pytest.approx((math.log(2) + 2.5 + math.log1p(math.exp(-2.5))) / 2, rel=1e-6)


def test_svm_tolerance_value():
    # tau * ln(1 + (C-1)/1000): 9.995e-4 for the binary instance heads
    assert hinge_tolerance(2, tau=1.0) == pytest.approx(math.log(1.001), rel=1e-12)
    assert hinge_tolerance(2, tau=1.0) == pytest.approx(9.995003e-4, rel=1e-6)
    assert hinge_tolerance(5, tau=0.5) == pytest.approx(0.5 * math.log(1.004), rel=1e-12)


def _aug_gap(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    u = x + alpha * (1 - F.one_hot(y, x.shape[1]).to(x.dtype)) - x.gather(1, y[:, None])
    top2 = u.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@pytest.mark.parametrize("n_classes,tau", [(2, 1.0), (5, 1.0), (5, 0.5)])
def test_svm_equals_hinge_when_gap_large(n_classes: int, tau: float):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, n_classes, generator=g, dtype=torch.float64) * 100
    y = torch.randint(0, n_classes, (400,), generator=g)
    smooth = smooth_top1_svm(x, y, alpha=1.0, tau=tau, reduction="none")
    hard = hard_top1_hinge(x, y, alpha=1.0, reduction="none")
    gap = _aug_gap(x, y, 1.0)
    excess = smooth - hard
    # exact two-sided bound from the derivation, for every sample
    lower = tau * torch.log1p(torch.exp(-gap / tau))
    upper = tau * torch.log1p((n_classes - 1) * torch.exp(-gap / tau))
    assert torch.all(excess >= lower - 1e-12) and torch.all(excess <= upper + 1e-12)
    large = gap >= tau * math.log(1000)
    assert large.float().mean() > 0.9  # logits x100: almost every sample has a large gap
    assert excess[large].max().item() <= hinge_tolerance(n_classes, tau)
    # float32 (the training dtype): same tolerance plus a few ulps of the loss magnitude
    s32 = smooth_top1_svm(x.float(), y, tau=tau, reduction="none")
    h32 = hard_top1_hinge(x.float(), y, reduction="none")
    slack = 8 * torch.finfo(torch.float32).eps * h32.abs().clamp(min=1)
    assert torch.all((s32 - h32)[large] <= hinge_tolerance(n_classes, tau) + slack[large])


def test_svm_smooth_when_gap_small():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 4, generator=g) * 0.1).requires_grad_(True)
    y = torch.randint(0, 4, (64,), generator=g)
    smooth = smooth_top1_svm(x, y, reduction="none")
    hard = hard_top1_hinge(x, y, reduction="none")
    # 3 near-tied wrong-class scores u ~ 1 and u_y = 0: the excess is about ln(3 + e^-1) = 1.21,
    # and never more than ln C (all C scores tied)
    excess = smooth - hard
    assert torch.all(excess > 0.9) and torch.all(excess < math.log(4))
    smooth.mean().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs() > 1e-4).all()  # every logit, true class included, receives gradient
    # gradient per row: softmax(u) on the other classes, -(1 - p_y) on the true class -> rows sum to 0
    assert x.grad.sum(dim=1).abs().max().item() < 1e-7


def _reference_svm(x: list[list[float]], y: list[int], alpha: float, tau: float) -> float:
    total = 0.0
    for row, t in zip(x, y, strict=True):
        terms = [(row[j] + (alpha if j != t else 0.0) - row[t]) / tau for j in range(len(row))]
        top = max(terms)
        total += tau * (top + math.log(sum(math.exp(v - top) for v in terms)))
    return total / len(x)


def test_svm_matches_float64_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 4, generator=g) * 3
    y = torch.randint(0, 4, (50,), generator=g)
    ref = _reference_svm(x.double().tolist(), y.tolist(), alpha=0.7, tau=0.3)
    assert smooth_top1_svm(x, y, alpha=0.7, tau=0.3).item() == pytest.approx(ref, rel=1e-6)
    assert smooth_top1_svm(x.double(), y, alpha=0.7, tau=0.3).item() == pytest.approx(ref, rel=1e-12)
    # huge logits do not overflow (log-sum-exp)
    big = smooth_top1_svm(torch.tensor([[1e4, -1e4]]), torch.tensor([1]), tau=0.01).item()
    assert big == pytest.approx(2e4 + 1.0, rel=1e-6)
    xd = x[:5].double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: smooth_top1_svm(t, y[:5], alpha=0.7, tau=0.3), (xd,))


# ------------------------------------------------------------------------------------- pseudo-label selection


def test_select_pseudo_labels_known_ranking():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.05, 0.5, 0.2, 0.7, 0.6, 0.4])
    idx, labels = select_pseudo_labels(scores, k=3, in_class=True)
    assert idx.tolist() == [1, 3, 7, 6, 0, 4]  # top 3 (0.9, 0.8, 0.7), then bottom 3 (0.2, 0.1, 0.05)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    idx, labels = select_pseudo_labels(scores, k=3, in_class=False)
    assert idx.tolist() == [1, 3, 7] and labels.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "n,pos,neg", [(1, 1, 0), (2, 1, 1), (3, 2, 1), (7, 4, 3), (15, 8, 7), (16, 8, 8), (40, 8, 8)]
)
def test_select_pseudo_labels_small_bags_disjoint(n: int, pos: int, neg: int):
    scores = torch.randperm(n).float()
    idx, labels = select_pseudo_labels(scores, k=8, in_class=True)
    assert int(labels.sum()) == pos and int((labels == 0).sum()) == neg
    assert len(set(idx.tolist())) == idx.numel()  # no tile gets both labels
    if neg:
        assert scores[idx[labels == 1]].min() > scores[idx[labels == 0]].max()
    out_idx, _ = select_pseudo_labels(scores, k=8, in_class=False)
    assert out_idx.numel() == min(8, n)


def test_select_pseudo_labels_ties_follow_tile_order():
    idx, labels = select_pseudo_labels(torch.zeros(6), k=2, in_class=True)
    assert idx.tolist() == [0, 1, 4, 5] and labels.tolist() == [1, 1, 0, 0]


def _rank_by_first_feature(model: ClamSB) -> None:
    """Make the attention score a monotonic function of feature 0: fc = identity on the first D dims,
    s = 0.5 * tanh(h_0) (tanh path reads feature 0, sigmoid path constant 0.5)."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.fc[0].weight[:D, :D] = torch.eye(D)
        model.attention.path_a[0].weight[0, 0] = 1.0
        model.attention.score.weight[0, 0] = 1.0
        for head in model.instance_classifiers:
            head.weight.normal_()


@pytest.mark.parametrize("subtyping", [False, True])
def test_clam_instance_loss_uses_top_and_bottom_attention(subtyping: bool):
    torch.manual_seed(0)
    model = ClamSB(cfg(n_classes=3, k_sample=2, subtyping=subtyping)).eval()
    _rank_by_first_feature(model)
    feats = torch.rand(6, D) * 0.1 + 0.05
    feats[:, 0] = torch.tensor([0.3, 0.9, 0.1, 0.7, 0.5, 0.2])  # ranking: 1, 3, 4, 0, 5, 2
    out = model(feats, label=1, instance_eval=True)
    assert torch.argsort(out.attention, descending=True).tolist() == [1, 3, 4, 0, 5, 2]
    idx, labels = select_pseudo_labels(out.attention, 2, in_class=True)
    assert idx.tolist() == [1, 3, 5, 2] and labels.tolist() == [1, 1, 0, 0]
    h = model.fc(feats)
    svm = SmoothTop1SVM()
    expected = [svm(model.instance_classifiers[1](h[[1, 3, 5, 2]]), torch.tensor([1, 1, 0, 0]))]
    expected_targets = [1, 1, 0, 0]
    if subtyping:  # classes 0 and 2: the top-2 tiles (1, 3) of the single branch are negatives
        for c in (0, 2):
            expected.append(svm(model.instance_classifiers[c](h[[1, 3]]), torch.tensor([0, 0])))
            expected_targets += [0, 0]
    assert out.instance_loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    assert out.instance_targets.tolist() == expected_targets


def test_clam_mb_out_of_class_uses_its_own_branch():
    torch.manual_seed(0)
    model = ClamMB(cfg(n_classes=2, k_sample=1, subtyping=True)).eval()
    feats = torch.randn(9, D)
    out = model(feats, label=0, instance_eval=True)
    h = model.fc(feats)
    svm = SmoothTop1SVM()
    a0, a1 = out.attention
    own = svm(model.instance_classifiers[0](h[[int(a0.argmax()), int(a0.argmin())]]), torch.tensor([1, 0]))
    other = svm(model.instance_classifiers[1](h[[int(a1.argmax())]]), torch.tensor([0]))
    assert out.instance_loss.item() == pytest.approx(((own + other) / 2).item(), rel=1e-6)


def test_ce_instance_loss_option():
    torch.manual_seed(0)
    model = ClamSB(cfg(inst_loss="ce", k_sample=2)).eval()
    feats = torch.randn(10, D)
    out = model(feats, label=0, instance_eval=True)
    idx, labels = select_pseudo_labels(out.attention, 2, in_class=True)
    manual = F.cross_entropy(model.instance_classifiers[0](model.fc(feats)[idx]), labels)
    assert out.instance_loss.item() == pytest.approx(manual.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("cls", [ClamSB, ClamMB])
@pytest.mark.parametrize("n", [1, 3, 7])
@pytest.mark.parametrize("subtyping", [False, True])
def test_clam_bags_smaller_than_k(cls, n: int, subtyping: bool):
    torch.manual_seed(n)
    model = cls(cfg(n_classes=3, k_sample=8, subtyping=subtyping)).train()
    out = model(torch.randn(n, D), label=torch.tensor([2]), instance_eval=True)
    k_neg = n // 2
    expected_targets = [1] * (n - k_neg) + [0] * k_neg + ([0] * (2 * n) if subtyping else [])
    assert out.instance_targets.tolist() == expected_targets
    total, parts = model.loss(out, torch.tensor([2]))
    assert total.ndim == 0 and torch.isfinite(total)
    assert total.item() == pytest.approx(0.7 * parts["bag"].item() + 0.3 * parts["instance"].item(), rel=1e-6)
    total.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert grads["fc.0.weight"].abs().sum() > 0
    assert grads["instance_classifiers.2.weight"].abs().sum() > 0
    used_other = grads["instance_classifiers.0.weight"]
    assert (used_other is not None and used_other.abs().sum() > 0) == subtyping


def test_mb_has_independent_classifiers():
    model = ClamMB(cfg(n_classes=3)).eval()
    heads = list(model.classifiers)
    assert isinstance(model.classifiers, nn.ModuleList) and len(heads) == 3
    assert all(h.out_features == 1 for h in heads)
    assert len({id(h.weight) for h in heads}) == 3
    assert len({h.weight.data_ptr() for h in heads}) == 3
    feats = torch.randn(20, D)
    with torch.no_grad():
        before = model(feats).logits.clone()
        heads[1].weight.add_(0.5)
        after = model(feats).logits
    assert after[0] == before[0] and after[2] == before[2]
    assert abs(after[1] - before[1]) > 1e-3


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "abmil", "mean_pool", "max_pool"])
def test_attention_normalised_and_permutation(name: str):
    torch.manual_seed(0)
    model = build_model(name, cfg(n_classes=3)).eval()
    feats = torch.randn(25, D)
    perm = torch.randperm(25)
    with torch.no_grad():
        out, out_p = model(feats), model(feats[perm])
    att = out.attention.reshape(-1, 25)
    assert att.shape[0] == (3 if name == "clam_mb" else 1)
    assert torch.allclose(att.sum(dim=1), torch.ones(att.shape[0]), atol=1e-6)
    assert torch.allclose(out_p.attention, out.attention[..., perm], atol=1e-6)
    assert torch.allclose(out_p.logits, out.logits, atol=1e-5)
    assert torch.allclose(out.probs.sum(), torch.tensor(1.0), atol=1e-6)
    if name.endswith("pool"):
        assert torch.allclose(out.attention, torch.full((25,), 1 / 25)) and out.attention_raw is None
    else:
        assert out.attention_raw.shape == out.attention.shape
        assert torch.allclose(torch.softmax(out.attention_raw, dim=-1), out.attention, atol=1e-6)


def test_tile_scores_per_model():
    torch.manual_seed(0)
    feats = torch.randn(12, D)
    mb = ClamMB(cfg(n_classes=3)).eval()
    out = mb(feats)
    assert torch.equal(mb.tile_scores(out, 2), out.attention_raw[2])
    sb = ClamSB(cfg(n_classes=3)).eval()
    out = sb(feats)
    assert torch.equal(sb.tile_scores(out, 0), out.attention_raw) and torch.equal(
        sb.tile_scores(out, 2), out.attention_raw
    )
    with pytest.raises(ValueError, match="out of range"):
        sb.tile_scores(out, 3)
    for name in ("mean_pool", "max_pool"):  # exact additive decomposition of each logit
        model = build_model(name, cfg(n_classes=3)).eval()
        out = model(feats)
        for c in range(3):
            recon = model.classifier.bias[c] + model.tile_scores(out, c).sum()
            assert recon.item() == pytest.approx(out.logits[c].item(), abs=1e-5)


def test_input_shapes_and_errors():
    torch.manual_seed(0)
    model = ClamSB(cfg()).eval()
    feats = torch.randn(5, D)
    assert torch.equal(model(feats[None]).logits, model(feats).logits)
    assert torch.allclose(model(feats.double()).logits, model(feats).logits, atol=1e-5)
    with pytest.raises(ValueError, match="one bag per step"):
        model(torch.randn(2, 5, D))
    with pytest.raises(ValueError, match="in_dim"):
        model(torch.randn(5, D + 1))
    with pytest.raises(ValueError, match="empty bag"):
        model(torch.randn(0, D))
    with pytest.raises(ValueError, match="label"):
        model(feats, instance_eval=True)
    with pytest.raises(ValueError, match="out of range"):
        model(feats, label=2, instance_eval=True)


def test_losses_of_each_model():
    torch.manual_seed(0)
    feats = torch.randn(10, D)
    clam = ClamSB(cfg(bag_weight=0.6)).eval()
    out = clam(feats, label=1, instance_eval=True)
    total, parts = clam.loss(out, 1)
    ce = F.cross_entropy(out.logits[None], torch.tensor([1]))
    assert total.item() == pytest.approx(0.6 * ce.item() + 0.4 * out.instance_loss.item(), rel=1e-6)
    assert set(parts) == {"bag", "instance", "total"}
    plain = clam(feats)  # no instance eval: the bag cross-entropy alone
    assert plain.instance_loss is None and clam.loss(plain, 1)[0].item() == pytest.approx(ce.item(), rel=1e-6)
    for name in ("abmil", "mean_pool", "max_pool"):
        model = build_model(name, cfg()).eval()
        o = model(feats, label=1, instance_eval=True)
        assert o.instance_loss is None
        total, parts = model.loss(o, torch.tensor(1))
        assert total.item() == pytest.approx(
            F.cross_entropy(o.logits[None], torch.tensor([1])).item(), rel=1e-6
        )
        assert set(parts) == {"bag", "total"}


def test_default_architecture_and_init():
    model = build_model("clam_mb", {"n_classes": 4})  # paper defaults: d=1024, small = 512/256
    assert model.fc[0].in_features == 1024 and model.fc[0].out_features == 512
    assert (
        model.fc[2].p == 0.25 and model.attention.path_a[2].p == 0.25 and model.attention.path_b[2].p == 0.25
    )
    assert model.attention.path_a[0].out_features == 256 and model.attention.score.out_features == 4
    assert len(model.instance_classifiers) == 4 and all(
        h.out_features == 2 for h in model.instance_classifiers
    )
    assert isinstance(model.instance_loss_fn, SmoothTop1SVM)
    assert model.instance_loss_fn.alpha == 1.0 and model.instance_loss_fn.tau == 1.0
    big = build_model("clam_sb", {"size": "big"})
    assert big.attention.path_b[0].out_features == 384
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    w = model.fc[0].weight  # xavier normal: std = sqrt(2 / (fan_in + fan_out)) = 0.0361
    assert w.std().item() == pytest.approx(math.sqrt(2 / (1024 + 512)), rel=0.02)
    out = model(torch.randn(30, 1024), label=3, instance_eval=True)
    assert out.logits.shape == (4,) and out.attention.shape == (4, 30)


def test_config_validation_and_round_trip():
    default = ClamConfig()
    assert (default.in_dim, default.n_classes, default.size, default.dropout, default.k_sample) == (
        1024,
        2,
        "small",
        0.25,
        8,
    )
    assert (default.inst_loss, default.subtyping, default.bag_weight) == ("svm", False, 0.7)
    assert (default.svm_alpha, default.svm_tau, default.hidden_dim, default.attention_dim) == (
        1.0,
        1.0,
        512,
        256,
    )
    c = ClamConfig.from_dict({"n_classes": 3, "subtyping": True, "size": "big"})
    assert ClamConfig.from_dict(c.to_dict()) == c and c.attention_dim == 384
    with pytest.raises(ValueError, match=r"unknown ClamConfig key\(s\) \['bag_wieght'\]"):
        ClamConfig.from_dict({"bag_wieght": 0.5})
    # CLAM's fields do not leak into the other MIL models' config
    assert set(MILConfig().to_dict()) == {"in_dim", "n_classes", "size", "dropout"}
    with pytest.raises(ValueError, match=r"unknown MILConfig key\(s\) \['k_sample'\]"):
        MILConfig.from_dict({"k_sample": 8})
    for bad in (
        {"size": "huge"},
        {"inst_loss": "hinge"},
        {"n_classes": 1},
        {"bag_weight": 1.5},
        {"dropout": 1.0},
        {"svm_tau": 0.0},
        {"k_sample": 0},
    ):
        with pytest.raises(ValueError):
            ClamConfig.from_dict(bad)
    with pytest.raises(TypeError):
        ClamConfig(in_dim=1024.0)
    with pytest.raises(TypeError):
        ClamConfig(subtyping="yes")


def test_method_registry():
    assert set(available_methods()) >= {"clam_sb", "clam_mb", "abmil", "mean_pool", "max_pool"}
    assert isinstance(build_model("clam_sb", ClamConfig()), ClamSB)
    assert get_method("abmil").config_cls is MILConfig and get_method("clam_mb").config_cls is ClamConfig
    with pytest.raises(KeyError, match="registered methods"):
        build_method("transmil", {})
    with pytest.raises(TypeError):
        build_method("clam_sb", 3)
    with pytest.raises(ValueError, match="unknown MILConfig key"):
        build_method("abmil", {"k_sample": 8})
    with pytest.raises(ValueError, match="already registered"):
        register_method("clam_sb")(type("Other", (ABMILMethod,), {}))
    try:

        @register_method("_test_dummy")
        class Dummy(ABMILMethod):
            pass

        assert "_test_dummy" in available_methods() and isinstance(build_method("_test_dummy", {}), Dummy)
    finally:
        _REGISTRY.pop("_test_dummy", None)


# ------------------------------------------------------------------------------------------ training sanity


def _synthetic_bags(n_bags: int, gen: torch.Generator, n_tiles: int = 64, shift: float = 8.0):
    """Class 1 bags hide 1-3 'signal' tiles (noise shifted by `shift` along a fixed unit direction)
    among `n_tiles` N(0, I) noise tiles (1.5-5 % of the bag); class 0 bags are all noise."""
    direction = torch.zeros(D)
    direction[:8] = 1 / math.sqrt(8)
    bags = []
    for i in range(n_bags):
        label = i % 2
        x = torch.randn(n_tiles, D, generator=gen)
        signal = torch.zeros(n_tiles, dtype=torch.bool)
        if label:
            idx = torch.randperm(n_tiles, generator=gen)[: int(torch.randint(1, 4, (1,), generator=gen))]
            x[idx] += shift * direction
            signal[idx] = True
        bags.append((x, label, signal))
    return bags


def _train_and_eval(name: str, train, test, epochs: int = 3) -> tuple[float, float | None]:
    torch.manual_seed(0)
    model = build_model(name, cfg())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(train)).tolist():
            x, y, _ = train[i]
            total, _ = model.loss(model(x, label=y, instance_eval=True), y)
            opt.zero_grad()
            total.backward()
            opt.step()
    model.eval()
    correct, ratios = 0, []
    with torch.no_grad():
        for x, y, signal in test:
            out = model(x)
            correct += int(out.prediction == y)
            if y and out.attention_raw is not None:
                ratios.append(out.attention[signal].mean() / out.attention[~signal].mean())
    return correct / len(test), (float(torch.stack(ratios).mean()) if ratios else None)


def test_clam_learns_rare_signal_and_beats_mean_pooling():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threading only adds overhead on the shared CPUs
    try:
        gen = torch.Generator().manual_seed(0)
        train, test = _synthetic_bags(96, gen), _synthetic_bags(64, gen)
        start = time.perf_counter()
        clam_acc, clam_ratio = _train_and_eval("clam_sb", train, test)
        mean_acc, _ = _train_and_eval("mean_pool", train, test)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    print(
        f"CLAM-SB test acc {clam_acc:.3f}, signal/noise attention {clam_ratio:.1f}x; "
        f"mean pooling test acc {mean_acc:.3f}; {elapsed:.1f} s"
    )
    assert clam_acc > 0.9
    assert clam_ratio > 10  # signal tiles get >10x the attention of a noise tile (hundreds in practice)
    assert mean_acc <= clam_acc - 0.1  # 1-3 signal tiles in 64: averaging dilutes them
