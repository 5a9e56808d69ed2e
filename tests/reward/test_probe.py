"""The linear-probe reward model: loss and fit against hand-computed values, the L2 choice on
constructed cases, and the probe written into a tiny model's score head scoring as the probe does."""

import math

import pytest
import torch

from reward.probe import (Probe, cut_to_probe_depth, fit_probe, pair_accuracy, probe_loss, reply_features, select_l2,
                          write_score_head)

SP1 = 0.31326168751822286  # log(1 + e^-1)
SIGMOID_MINUS_1 = 1 / (1 + math.e)  # 0.2689414213699951


def test_probe_loss_hand_computed():
    # One pair, features 2 and 0, weight 0.5: d = 1, loss log(1 + e^-1) + 0.1 * 0.25.
    x = torch.tensor([[[2.0], [0.0]]])
    loss = probe_loss(torch.tensor([0.5]), x, torch.tensor([[1, 2]]), l2=0.1)
    assert loss.item() == pytest.approx(SP1 + 0.025, abs=1e-7)
    assert loss.item() == pytest.approx(0.33826168751822286, abs=1e-7)


def test_probe_loss_ties_and_padding_give_no_pair():
    # ranks 1, 2, 2, 0: pairs (0,1) and (0,2), both d = 1; the tie and the empty slot add nothing.
    x = torch.tensor([[[1.0], [0.0], [0.0], [50.0]]])
    loss = probe_loss(torch.tensor([1.0]), x, torch.tensor([[1, 2, 2, 0]]), l2=0.0)
    assert loss.item() == pytest.approx(SP1, abs=1e-7)


def test_fit_probe_reaches_the_hand_computed_optimum():
    # One pair with feature difference 1: minimise log(1 + e^-w) + l2 w^2. Stationary where
    # sigmoid(-w) = 2 l2 w; with l2 = sigmoid(-1) / 2 that is w = 1 exactly.
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    weight = fit_probe(x, torch.tensor([[1, 2]]), l2=SIGMOID_MINUS_1 / 2)
    assert weight[0].item() == pytest.approx(1.0, abs=1e-6)
    assert weight[1].item() == pytest.approx(0.0, abs=1e-9)  # no signal in feature 2: L2 keeps it at 0


def test_pair_accuracy_hand_computed():
    # ranks 1, 2, 3 with scores 3, 1, 1: (0,1) right, (0,2) right, (1,2) a tie: (1 + 1 + 0.5) / 3.
    acc = pair_accuracy(torch.tensor([[3.0, 1.0, 1.0]]), torch.tensor([[1, 2, 3]]))
    assert acc == pytest.approx(2.5 / 3)


def _constructed(n: int, seed: int, reverse: bool = False):
    """n rankings of 4 replies, 3 features; the rank follows feature 0 (reversed if asked)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 3, generator=g)
    order = x[:, :, 0].argsort(dim=1, descending=not reverse)
    ranks = torch.empty(n, 4, dtype=torch.long)
    ranks.scatter_(1, order, torch.arange(1, 5).expand(n, 4).contiguous())
    return x, ranks


def test_select_l2_keeps_the_weak_penalty_when_validation_agrees():
    train_x, train_ranks = _constructed(30, seed=0)
    val_x, val_ranks = _constructed(10, seed=1)
    probe = select_l2("last@2", train_x, train_ranks, val_x, val_ranks, grid=(1e-4, 10.0))
    assert probe.l2 == 1e-4
    losses = {s["l2"]: s["val_loss"] for s in probe.selection}
    assert losses[1e-4] < losses[10.0] < math.log(2)  # strong penalty: close to the coin flip's log 2
    assert pair_accuracy(probe.scores(val_x), val_ranks) == 1.0


def test_select_l2_shrinks_when_validation_disagrees():
    # What training teaches is wrong on validation: the strength that learns least wins.
    train_x, train_ranks = _constructed(30, seed=0)
    val_x, val_ranks = _constructed(10, seed=1, reverse=True)
    probe = select_l2("last@2", train_x, train_ranks, val_x, val_ranks, grid=(1e-4, 10.0), refit=False)
    assert probe.l2 == 10.0
    assert probe.selection[0]["val_accuracy"] == 0.0 and probe.selection[0]["train_accuracy"] == 1.0


@pytest.fixture(scope="module")
def tiny_score_model(tiny_model_dir):
    from rlhf.modeling import load_score_model, load_tokenizer

    return load_score_model(tiny_model_dir), load_tokenizer(tiny_model_dir, padding_side="right")


def _ids(tokenizer):
    from reward.data import reply_ids

    prompt = "Where is my parcel?"
    replies = ["It ships today.", "Sorry, I cannot tell you that right now, please write again later.",
               "Check the tracking page.", "Hello! Your parcel left the warehouse on Monday and will arrive soon."]
    return [reply_ids(tokenizer, prompt, r) for r in replies]


def test_reply_features_do_not_depend_on_padding(tiny_score_model):
    from rlhf.modeling import reply_marker, reply_starts

    model, tokenizer = tiny_score_model
    ids = _ids(tokenizer)
    together = reply_features(model, ids, tokenizer.pad_token_id, layers=[1, 2], batch_size=4)
    for i, seq in enumerate(ids):
        alone = reply_features(model, [seq], tokenizer.pad_token_id, layers=[1, 2], batch_size=1)
        for key in ("last@1", "mean@1", "last@2", "mean@2"):
            assert torch.allclose(together[key][i], alone[key][0], atol=1e-5), key
    with torch.no_grad():  # the mean of one unpadded sequence's block-1 output, by hand
        hidden = model.model(input_ids=torch.tensor([ids[1]]), output_hidden_states=True).hidden_states[1][0]
    assert torch.allclose(together["mean@1"][1], hidden.mean(0), atol=1e-5)
    marker = reply_marker(tokenizer)  # the reply's own tokens: after the template's generation prompt
    start = int(reply_starts(torch.tensor([ids[1]]), marker)[0])
    assert 0 < start < len(ids[1]) - 1
    reply = reply_features(model, ids, tokenizer.pad_token_id, [1], ("rmean",), batch_size=4, marker=marker)
    assert torch.allclose(reply["rmean@1"][1], hidden[start:].mean(0), atol=1e-5)


def test_ranking_features_pad_a_shorter_ranking(tiny_score_model):
    from reward.data import reply_ids
    from reward.probe import ranking_features

    model, tokenizer = tiny_score_model
    rows = [{"prompt": "Where is my parcel?", "completions": ["It ships today.", "No idea.", "Soon."], "ranks": [1, 3, 2]},
            {"prompt": "Refund?", "completions": ["Yes.", "No.", "Maybe.", "Ask later."], "ranks": [2, 1, 1, 4]}]
    features, ranks = ranking_features(model, tokenizer, rows, "last@2")
    assert features.shape == (2, 4, model.config.hidden_size)
    assert ranks.tolist() == [[1, 3, 2, 0], [2, 1, 1, 4]]
    assert features[0, 3].abs().sum() == 0  # the empty slot
    alone = reply_features(model, [reply_ids(tokenizer, "Refund?", "No.")], tokenizer.pad_token_id, [2], ("last",))
    assert torch.allclose(features[1, 1], alone["last@2"][0], atol=1e-5)


def test_probe_written_into_the_score_head_scores_as_the_probe(tiny_score_model):
    from reward.evaluate import score_ids

    model, tokenizer = tiny_score_model
    ids = _ids(tokenizer)
    features = reply_features(model, ids, tokenizer.pad_token_id, layers=[2], poolings=("last",))["last@2"]
    g = torch.Generator().manual_seed(0)
    probe = Probe("last@2", torch.randn(features.shape[1], generator=g, dtype=torch.float64),
                  features.double().mean(0), features.double().std(0), l2=0.1)
    write_score_head(model, probe)
    scores = torch.tensor(score_ids(model, ids, tokenizer.pad_token_id, batch_size=4), dtype=torch.float64)
    expected = probe.scores(features)
    # Equal up to one constant (the head has no bias): every difference between replies agrees.
    assert torch.allclose(scores - scores[0], expected - expected[0], atol=1e-4)
    with pytest.raises(ValueError, match="cannot be this model.s score head"):
        write_score_head(model, Probe("mean@2", probe.weight, probe.mean, probe.std, 0.1))


def test_mean_pooled_probe_as_score_head(tiny_model_dir):
    from reward.evaluate import score_ids
    from reward.probe import use_mean_pooling
    from rlhf.modeling import load_score_model, load_tokenizer

    model, tokenizer = load_score_model(tiny_model_dir), load_tokenizer(tiny_model_dir, padding_side="right")
    ids = _ids(tokenizer)
    features = reply_features(model, ids, tokenizer.pad_token_id, layers=[2], poolings=("mean",))["mean@2"]
    g = torch.Generator().manual_seed(1)
    probe = Probe("mean@2", torch.randn(features.shape[1], generator=g, dtype=torch.float64),
                  features.double().mean(0), features.double().std(0), l2=0.1)
    with pytest.raises(ValueError, match="use_mean_pooling"):
        write_score_head(model, probe)
    use_mean_pooling(model)
    write_score_head(model, probe)
    scores = torch.tensor(score_ids(model, ids, tokenizer.pad_token_id, batch_size=4), dtype=torch.float64)
    expected = probe.scores(features)
    assert torch.allclose(scores - scores[0], expected - expected[0], atol=1e-4)
    # TRL's PPO reads score(hidden_states[-1]) at the last token of left-padded sequences: same scores.
    seq = torch.tensor([[tokenizer.pad_token_id] * 3 + ids[1]])
    mask = (seq != tokenizer.pad_token_id).long()
    out = model.model(input_ids=seq, attention_mask=mask, output_hidden_states=True, use_cache=False)
    assert model.score(out.hidden_states[-1])[0, -1].item() == pytest.approx(scores[1].item(), abs=1e-4)


def test_mean_pooled_checkpoint_scores_the_same_after_reload(tiny_model_dir, tmp_path):
    """A mean-pooled reward model saved and reloaded through ``rlhf.modeling.load_score_model`` (as
    ``rlhf reward score``, eval and export do) and through PPO's reward path (``rlhf.rewards`` loader,
    TRL's ``get_reward`` on left-padded query + response) scores every reply as before saving."""
    from trl.experimental.utils import get_reward

    from reward.evaluate import score_ids
    from rlhf.modeling import load_score_model, load_tokenizer, use_mean_pooling
    from rlhf.rewards import load_reward_model

    model, tokenizer = load_score_model(tiny_model_dir), load_tokenizer(tiny_model_dir, padding_side="right")
    ids = _ids(tokenizer)
    use_mean_pooling(model)
    use_mean_pooling(model)  # a second call must not pool the pooled states again
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g))
    before = score_ids(model, ids, tokenizer.pad_token_id, batch_size=4)
    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")

    reloaded = load_score_model(tmp_path / "rm")
    assert reloaded.config.score_pooling == "mean"
    assert score_ids(reloaded, ids, tokenizer.pad_token_id, batch_size=4) == pytest.approx(before, abs=1e-5)
    # Without the hook the same weights score differently: the reload really re-attached it.
    plain = load_score_model(tiny_model_dir)
    with torch.no_grad():
        plain.score.weight.copy_(model.score.weight)
    assert max(abs(a - b) for a, b in zip(score_ids(plain, ids, tokenizer.pad_token_id, batch_size=4), before)) > 1e-3

    ppo_model = load_reward_model(str(tmp_path / "rm"), "float32", None, center=False)
    pad = tokenizer.pad_token_id
    width = max(len(x) for x in ids) + 2
    rows = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left-padded, as PPO's queries are
    with torch.no_grad():
        # context_length past every row's padding: the reward is read at each row's last token
        _, scores, _ = get_reward(ppo_model, rows, pad, width - min(len(x) for x in ids))
    assert scores.tolist() == pytest.approx(before, abs=1e-4)


def _planted(n: int, seed: int, noise: float = 1.0):
    """n rankings of K = 2 replies, 4 features; feature 0 decides which reply wins (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, generator=g)
    better_first = (x[:, 0, 0] - x[:, 1, 0] + noise * torch.randn(n, generator=g)) > 0
    ranks = torch.where(better_first.unsqueeze(1), torch.tensor([1, 2]), torch.tensor([2, 1]))
    return x, ranks


def test_learning_curve_averages_random_subsets_and_fits_all_rankings_once():
    from reward.schedule import probe_learning_curve

    (tx, tr), (vx, vr), (sx, sr) = _planted(40, 0), _planted(20, 1), _planted(200, 2)
    curve = probe_learning_curve("mean@1", tx, tr, vx, vr, sx, sr, repeats=5, seed=3)
    assert [c["rankings"] for c in curve] == [10, 20, 40]
    assert [c["repeats"] for c in curve] == [5, 5, 1] and curve[-1]["spread"] == 0.0
    assert all(c["spread"] >= 0 for c in curve)
    # the last point is the probe on every training ranking, L2 chosen on validation: as select_l2 gives it
    whole = select_l2("mean@1", tx, tr, vx, vr, refit=False)
    assert curve[-1]["accuracy"] == pair_accuracy(whole.scores(sx), sr) and curve[-1]["l2"] == whole.l2
    assert probe_learning_curve("mean@1", tx, tr, vx, vr, sx, sr, repeats=5, seed=3) == curve  # seeded
    assert curve[-1]["accuracy"] > 0.6  # the planted feature is learned


def test_shuffle_ranks_permutes_each_ranking_among_its_replies():
    from reward.schedule import shuffle_ranks

    ranks = torch.tensor([[1, 2, 2, 3], [2, 1, 0, 0], [1, 1, 2, 0]])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = shuffle_ranks(ranks, g)
        for row, new in zip(ranks.tolist(), out.tolist()):
            assert sorted(row) == sorted(new)  # same ranks, ties and reply count
            assert [r == 0 for r in row] == [r == 0 for r in new]  # padding slots stay padding
        seen.add(tuple(out[0].tolist()))
    assert len(seen) > 3  # and it does shuffle


def test_cross_fold_groups_keep_a_prompt_in_one_fold_and_balance_the_folds():
    from reward.schedule import cross_fold_groups

    groups = ["a", "b", "a", "c", "d", "e", "b", "f", "g"]  # 7 prompts; a and b ranked twice
    folds = cross_fold_groups(groups, 3, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(len(groups)))  # every row once
    fold_of = {i: n for n, f in enumerate(folds) for i in f}
    assert fold_of[0] == fold_of[2] and fold_of[1] == fold_of[6]  # a prompt's rankings stay together
    assert sorted(len({groups[i] for i in f}) for f in folds) == [2, 2, 3]  # prompts dealt round-robin
    assert cross_fold_groups(groups, 3, seed=0) == folds and cross_fold_groups(groups, 3, seed=1) != folds


def test_cross_fit_pools_each_folds_out_of_fold_scores():
    from reward.schedule import cross_fold_groups, probe_cross_fit

    x, ranks = _planted(60, 0, noise=0.5)
    folds = cross_fold_groups(list(range(60)), 5, seed=0)
    # by hand: fold f scored by the probe fitted on the three others, its L2 chosen on fold f + 1
    scores = torch.zeros(ranks.shape, dtype=torch.float64)
    for f in range(5):
        v = (f + 1) % 5
        train = [i for j in range(5) if j not in (f, v) for i in folds[j]]
        scores[folds[f]] = select_l2("mean@1", x[train], ranks[train], x[folds[v]], ranks[folds[v]]).scores(x[folds[f]])
    assert probe_cross_fit("mean@1", x, ranks, folds) == pair_accuracy(scores, ranks) > 0.7  # planted: learned


def test_chance_null_of_a_planted_probe_sits_at_chance_and_below_the_real_fit():
    from reward.schedule import probe_chance_null

    x, ranks = _planted(80, 0, noise=0.5)
    groups = [i // 2 for i in range(80)]  # 40 prompts, two rankings each
    chance = probe_chance_null("mean@1", x, ranks, groups, repeats=12, seed=0, progress=False)
    assert probe_chance_null("mean@1", x, ranks, groups, repeats=12, seed=0, progress=False) == chance  # seeded
    assert (len(chance.accuracies), chance.prompts, chance.folds) == (12, 40, 5)
    # On 4 features a direction fitted to noise is still a direction: its accuracy spreads around 0.5
    # (why the test is exact, not a normal approximation); the real rankings beat every shuffle.
    assert min(chance.accuracies) < 0.5 < max(chance.accuracies) and chance.accuracy > 0.8 and chance.passed
    assert "cross-fitted over all 40 prompts (5 folds)" in chance.bar_text()
    shuffled = ranks.flip(1)[torch.randperm(80, generator=torch.Generator().manual_seed(1))]  # labels off their rows
    assert not probe_chance_null("mean@1", x, shuffled, groups, repeats=12, seed=0, progress=False).accuracy > 0.6
    with pytest.raises(ValueError, match="3 or more prompts"):
        probe_chance_null("mean@1", x, ranks, [0, 1] * 40, repeats=12, progress=False)

def test_a_model_cut_to_its_bottom_layers_reads_that_layer_through_the_final_norm(tiny_model_dir, tmp_path):
    """``keep_bottom_layers`` (the default probe's ``probe_depth``): the cut model's last hidden state is
    the full model's layer output through the final norm; saved, it reloads at that depth and scores alike."""
    from reward.evaluate import score_ids
    from rlhf.modeling import keep_bottom_layers, layers_at_depth, load_score_model, load_tokenizer

    assert [layers_at_depth(0.25, n) for n in (30, 2, 1, 4)] == [8, 1, 1, 1]
    assert layers_at_depth(1.0, 30) == 30 and layers_at_depth(0.5, 30) == 15 and layers_at_depth(0.26, 30) == 8
    full, tokenizer = load_score_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir, padding_side="right")
    cut = load_score_model(tiny_model_dir).eval()
    keep_bottom_layers(cut, 1)
    assert cut.config.num_hidden_layers == 1 and len(cut.model.layers) == 1
    seq = torch.tensor([_ids(tokenizer)[0]])
    with torch.no_grad():
        mine = cut.model(input_ids=seq).last_hidden_state
        theirs = full.model(input_ids=seq, output_hidden_states=True).hidden_states[1]
        assert torch.allclose(mine, full.model.norm(theirs), atol=1e-6)
        assert not torch.allclose(mine, full.model(input_ids=seq).last_hidden_state, atol=1e-3)
    before = score_ids(cut, _ids(tokenizer), tokenizer.pad_token_id, batch_size=4)
    cut.save_pretrained(tmp_path / "cut", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "cut")
    reloaded = load_score_model(tmp_path / "cut")
    assert reloaded.config.num_hidden_layers == 1
    assert score_ids(reloaded, _ids(tokenizer), tokenizer.pad_token_id, batch_size=4) == pytest.approx(before, abs=1e-6)
    with pytest.raises(ValueError, match="cannot keep 3 of 1 layers"):
        keep_bottom_layers(reloaded, 3)
    # the same features without cutting (bench/probe_depth.py): reply_features' ``normed`` layer 1
    ids = _ids(tokenizer)
    uncut = reply_features(full, ids, tokenizer.pad_token_id, [1], ("mean",), normed=True)["mean@1"]
    assert cut_to_probe_depth(load_score_model(tiny_model_dir), 0.25) == "mean@1"
    assert torch.allclose(uncut, reply_features(cut, ids, tokenizer.pad_token_id, [1], ("mean",))["mean@1"], atol=1e-5)


def test_score_support_scores_a_reply_unlike_every_fitted_one_as_the_worst_of_them(tiny_model_dir, tmp_path):
    """``probe_support`` on the replies a probe was fitted on, ``use_score_support`` on the model: a
    reply inside scores as before, one beyond the bound scores as the worst fitted reply, through a
    save and reload, PPO's ``get_reward`` on a centred head, and not in a value model."""
    from trl.experimental.utils import get_reward

    from reward.evaluate import score_ids
    from reward.probe import probe_support
    from rlhf.modeling import SUPPORT_TOLERANCE, load_score_model, load_tokenizer, use_mean_pooling, use_score_support
    from rlhf.rewards import load_reward_model

    model, tokenizer = load_score_model(tiny_model_dir), load_tokenizer(tiny_model_dir, padding_side="right")
    fitted = _ids(tokenizer)
    odd = [[fitted[0][0]] + [fitted[1][-1]] * 30, [fitted[2][0]] + [fitted[0][1]] * 25]  # one token repeated
    ids = fitted + odd
    features = reply_features(model, ids, tokenizer.pad_token_id, layers=[2], poolings=("mean",))["mean@2"].double()
    x = features[:len(fitted)]
    g = torch.Generator().manual_seed(3)
    probe = Probe("mean@2", torch.randn(x.shape[1], generator=g, dtype=torch.float64), x.mean(0), x.std(0), 0.1)
    support = probe_support(probe, x.unsqueeze(1), torch.ones(len(fitted), 1, dtype=torch.long))
    rms = ((features - x.mean(0)) / x.std(0)).pow(2).mean(1).sqrt()
    assert support["bound"] == pytest.approx(float(rms[:len(fitted)].max()))
    worst = int(probe.scores(x).argmin())
    assert support["worst"] == pytest.approx(x[worst].tolist(), abs=1e-6)
    outside = [i for i in range(len(ids)) if rms[i] > support["bound"] * (1 + SUPPORT_TOLERANCE)]
    assert outside and set(outside) >= {len(fitted), len(fitted) + 1}  # the repeated tokens are far outside

    use_mean_pooling(model)
    write_score_head(model, probe)
    before = score_ids(model, ids, tokenizer.pad_token_id, batch_size=4)
    use_score_support(model, support)
    use_score_support(model, support)  # one hook
    after = score_ids(model, ids, tokenizer.pad_token_id, batch_size=4)
    for i in range(len(ids)):
        assert after[i] == pytest.approx(before[worst] if i in outside else before[i], abs=1e-4), i

    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    assert score_ids(load_score_model(tmp_path / "rm"), ids, tokenizer.pad_token_id) == pytest.approx(after, abs=1e-4)
    value = load_score_model(tmp_path / "rm", with_support=False)  # PPO's value model starts from it without
    assert score_ids(value, ids, tokenizer.pad_token_id) == pytest.approx(before, abs=1e-4)
    # PPO's reward: the head centred (replaced by a new Linear), left-padded rows read at their last token.
    ppo_model = load_reward_model(str(tmp_path / "rm"), "float32", {"mean": 1.0, "std": 2.0}, center=True)
    pad = tokenizer.pad_token_id
    width = max(len(r) for r in ids) + 2
    rows = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    with torch.no_grad():
        _, scores, _ = get_reward(ppo_model, rows, pad, width - min(len(r) for r in ids))
    assert scores.tolist() == pytest.approx([(a - 1.0) / 2.0 for a in after], abs=1e-4)


def test_reply_starts_after_the_marker_s_last_occurrence_whatever_the_padding(tiny_model_dir):
    from rlhf.modeling import load_tokenizer, reply_marker, reply_starts

    ids = torch.tensor([[0, 0, 5, 1, 2, 7, 1, 2, 9, 9],  # left-padded, the marker twice: after the last
                        [5, 1, 2, 7, 7, 7, 0, 0, 0, 0],  # right-padded
                        [5, 6, 7, 8, 0, 0, 0, 0, 0, 0]])  # no marker: the whole row
    assert reply_starts(ids, [1, 2]).tolist() == [8, 3, 0]
    assert reply_starts(ids, None).tolist() == [0, 0, 0]
    assert reply_starts(ids[:, :1], [1, 2]).tolist() == [0, 0, 0]  # shorter than the marker
    one = [int(reply_starts(torch.tensor([x]), [1, 2])[0]) for x in ([1, 2], [3, 1, 2, 4], [1])]  # unpadded rows
    assert one == [2, 3, 0]
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.decode(reply_marker(tokenizer)) == "<|im_start|>assistant\n"


def test_reply_support_measures_the_reply_s_own_tokens_under_any_prompt(tiny_model_dir, tmp_path):
    """With the chat template's marker the support measures the mean over the reply's own tokens
    (``support_features``), and the hook flags exactly the replies those features put outside, scored
    as the worst fitted one: right-padded (the model's forward) and left-padded (PPO's ``get_reward``),
    through a save and reload. A degenerate reply under a long prompt is outside."""
    from trl.experimental.utils import get_reward

    from reward.data import reply_ids
    from reward.evaluate import score_ids
    from reward.probe import probe_support, support_features
    from rlhf.modeling import (load_score_model, load_tokenizer, outside_support, reply_marker, use_mean_pooling,
                               use_score_support)

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    marker, pad = reply_marker(tokenizer), tokenizer.pad_token_id
    questions = ["Where is my parcel?", "Can I change my address?", "Why was I charged twice?"]
    answers = ["It ships today.", "Sorry, I cannot tell you that right now, please write again later.",
               "Check the tracking page.", "Hello! Your parcel left the warehouse on Monday and will arrive soon."]
    chat = (lambda q, a: reply_ids(tokenizer, [{"role": "user", "content": q}], [{"role": "assistant", "content": a}]))
    fitted = [chat(q, a) for q in questions for a in answers]
    long_prompt = " ".join(questions * 6)
    odd = [chat(long_prompt, "please " * 12), chat(questions[0], "\U0001F60A" * 10)]
    ids = fitted + odd + [chat(long_prompt, a) for a in answers]
    plain = load_score_model(tiny_model_dir, with_pooling=False)
    x = reply_features(plain, fitted, pad, layers=[2], poolings=("mean",))["mean@2"].double()
    g = torch.Generator().manual_seed(5)
    probe = Probe("mean@2", torch.randn(x.shape[1], generator=g, dtype=torch.float64), x.mean(0), x.std(0), 0.1)
    measured = support_features(plain, ids, pad, {"reply_marker": marker}).double()
    assert not torch.allclose(measured[0], x[0].float().double(), atol=1e-3)  # the reply's tokens, not the prompt's
    ones = torch.ones(len(fitted), 1, dtype=torch.long)
    support = probe_support(probe, x.unsqueeze(1), ones, measured[:len(fitted)].unsqueeze(1), marker)
    assert support["reply_marker"] == marker and support["mean"] == pytest.approx(measured[:len(fitted)].mean(0).tolist(), abs=1e-5)
    flags = outside_support(support, measured).tolist()
    assert not any(flags[:len(fitted)]) and flags[len(fitted)] and flags[len(fitted) + 1], flags
    with pytest.raises(ValueError, match="marker"):
        probe_support(probe, x.unsqueeze(1), ones, measured[:len(fitted)].unsqueeze(1), None)

    model = load_score_model(tiny_model_dir)
    use_mean_pooling(model)
    write_score_head(model, probe)
    before = score_ids(model, ids, pad, batch_size=5)
    use_score_support(model, support)
    after = score_ids(model, ids, pad, batch_size=5)
    worst = int(probe.scores(x).argmin())
    for i, outside in enumerate(flags):
        assert after[i] == pytest.approx(before[worst] if outside else before[i], abs=1e-4), i
    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    reloaded = load_score_model(tmp_path / "rm")
    assert reloaded.config.score_support["reply_marker"] == marker
    width = max(len(r) for r in ids) + 2
    rows = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    with torch.no_grad():
        _, scores, _ = get_reward(reloaded, rows, pad, width - min(len(r) for r in ids))
    assert scores.tolist() == pytest.approx(after, abs=1e-4)
