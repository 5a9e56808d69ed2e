"""A reward model that generalises from a hundred rankings: a linear probe on frozen features.

Fine-tuning a 135M-parameter model on ~100 rankings memorises them (issue 14: 0.94 training and
0.55 held-out accuracy). A linear Bradley-Terry model on the frozen hidden states has a few hundred
parameters and one regularisation knob, chosen on a validation split held out by prompt, so it can
only learn what the base model already represents. Read top to bottom:

  reply_features   frozen features of each reply: hidden state of the last token (what a
                   ``*ForSequenceClassification`` score head reads) or the mean over tokens, per layer
  probe_loss       K-wise Bradley-Terry (InstructGPT's loss, ``reward.losses.kwise_loss``) + L2
  fit_probe        the convex fit (Newton on pair differences) on standardised features
  select_l2        the L2 strength with the lowest validation loss, then a refit on train + validation
  write_score_head the fitted probe as the ``score`` weight, so the model is a plain reward model
                   that PPO uses as is (last-token features of the last layer; mean-pooled ones
                   after ``use_mean_pooling``)

This is the linear-probe half of LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features"): a good head first, so that any fine-tuning afterwards starts from it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from reward.losses import kwise_loss
from rlhf.modeling import use_mean_pooling  # noqa: F401  (lives in core: every loader of a checkpoint needs it)

# On standardised features. With ~100 rankings of the bundled model's replies, validation picked
# 0.1 to 100 (a grid ending at 1 had most picks at its edge); the ends are rarely needed.
L2_GRID = tuple(10.0 ** e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2))  # on standardised features
POOLINGS = ("last", "mean")  # "rmean" (reply tokens only) needs the reply marker


# ---------------------------------------------------------------------------------------------------
# Features


def backbone(model):
    """The transformer under a ``*ForSequenceClassification`` or ``*ForCausalLM`` model."""
    return getattr(model, model.base_model_prefix)


def reply_features(model, ids: list[list[int]], pad_token_id: int, layers: list[int],
                   poolings: tuple[str, ...] = POOLINGS, batch_size: int = 16,
                   marker: list[int] | None = None, normed: bool = False) -> dict[str, torch.Tensor]:
    """Frozen features of each token sequence: ``{"last@L", "mean@L" or "rmean@L": [N, H]}``, float32.

    ``layers``: 1..num_hidden_layers; the last layer is ``last_hidden_state`` (after the final norm,
    exactly what the score head reads), the others are that block's output (the residual stream), or
    (``normed``) that output through the final norm, which is what a model cut to that many layers
    (``cut_to_probe_depth``) reads as its last hidden state.
    ``last`` is the hidden state of the last token (the sequences are right-padded, and the pad token
    is never EOS, so this is the token a ``*ForSequenceClassification`` model scores); ``mean``
    averages every token of prompt + reply; ``rmean`` only the reply's own tokens and its EOS, after
    ``marker``'s last occurrence (``rlhf.modeling.reply_mask``, which the support's hook uses too).
    """
    from trl.trainer.utils import pad

    from rlhf.modeling import reply_mask

    body = backbone(model)
    n_layers = model.config.num_hidden_layers
    for layer in layers:
        if not 1 <= layer <= n_layers:
            raise ValueError(f"layer {layer} outside 1..{n_layers}")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch together
    out = {f"{p}@{layer}": torch.zeros(len(ids), model.config.hidden_size) for layer in layers for p in poolings}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seqs = [torch.tensor(ids[i]) for i in chunk]
            input_ids = pad(seqs, padding_value=pad_token_id, padding_side="right").to(device)
            mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right").to(device)
            result = body(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            last_index = mask.sum(1) - 1  # [B]
            rows = torch.arange(len(chunk))
            for layer in layers:
                h = result.last_hidden_state if layer == n_layers else result.hidden_states[layer]
                if normed and layer < n_layers:
                    h = body.norm(h)
                h = h.float()
                if "last" in poolings:
                    out[f"last@{layer}"][chunk] = h[rows, last_index].cpu()
                if "mean" in poolings:
                    m = mask.unsqueeze(-1).to(h.dtype)
                    out[f"mean@{layer}"][chunk] = ((h * m).sum(1) / m.sum(1)).cpu()
                if "rmean" in poolings:
                    m = reply_mask(input_ids, mask, marker).unsqueeze(-1).to(h.dtype)
                    out[f"rmean@{layer}"][chunk] = ((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu()
    model.train(was_training)
    return out


def cut_to_probe_depth(model, depth: float, pooling: str = "mean") -> str:
    """Keep the bottom ``depth`` share of ``model``'s decoder layers (``rlhf.modeling.layers_at_depth``:
    8 of the bundled model's 30 at the default ``reward.config.PROBE_DEPTH``), in place, and return the
    name of the features the probe reads from what is left: ``"mean@8"``."""
    from rlhf.modeling import keep_bottom_layers, layers_at_depth

    keep_bottom_layers(model, layers_at_depth(depth, model.config.num_hidden_layers))
    return f"{pooling}@{model.config.num_hidden_layers}"


def ranking_features(model, tokenizer, rows: list[dict], feature: str,
                     batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """K-wise rows (``prompt``, ``completions``, ``ranks``) -> features [B, K_max, H] and ranks
    [B, K_max] (0 and zeros in the slots of a ranking with fewer replies). ``feature``: ``"last@L"``
    or ``"mean@L"``. Replies are tokenized as the reward model reads them (``reward.data.reply_ids``).
    """
    sets, ranks = ranking_feature_sets(model, tokenizer, rows, (feature,), batch_size)
    return sets[feature], ranks


def ranking_feature_sets(model, tokenizer, rows: list[dict], features: tuple[str, ...], batch_size: int = 16,
                         marker: list[int] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``ranking_features`` for several features of one layer from one pass: ``{feature: [B, K_max, H]}``
    and the ranks. ``"rmean@L"`` averages the reply's own tokens, after ``marker``'s last occurrence
    (``rlhf.modeling.reply_mask``)."""
    from reward.data import reply_ids

    (layer,) = {int(f.split("@")[1]) for f in features}
    ids = [reply_ids(tokenizer, row["prompt"], c) for row in rows for c in row["completions"]]
    flat = reply_features(model, ids, tokenizer.pad_token_id, [layer], tuple(f.split("@")[0] for f in features),
                          batch_size, marker=marker)
    k_max = max(len(row["completions"]) for row in rows)
    ranks = torch.zeros(len(rows), k_max, dtype=torch.long)
    out = {f: torch.zeros(len(rows), k_max, flat[f].shape[1]) for f in features}
    start = 0
    for b, row in enumerate(rows):
        k = len(row["completions"])
        for f in features:
            out[f][b, :k] = flat[f][start:start + k]
        ranks[b, :k] = torch.tensor(list(row["ranks"]))
        start += k
    return out, ranks


def support_features(model, ids: list[list[int]], pad_token_id: int, support: dict,
                     batch_size: int = 16) -> torch.Tensor:
    """[N, H]: the features ``support`` measures (``rlhf.modeling.use_score_support``) of each token
    sequence, from ``model`` without hooks (``load_score_model(..., with_pooling=False)``): the mean
    over the reply's own tokens (``reply_marker``), else the features its head reads."""
    marker = support.get("reply_marker")
    pooling = "rmean" if marker else ("mean" if getattr(model.config, "score_pooling", None) == "mean" else "last")
    layer = model.config.num_hidden_layers
    return reply_features(model, ids, pad_token_id, [layer], (pooling,), batch_size, marker=marker)[f"{pooling}@{layer}"]


# ---------------------------------------------------------------------------------------------------
# The probe: K-wise Bradley-Terry on standardised features, L2-regularised


def probe_loss(weight: torch.Tensor, features: torch.Tensor, ranks: torch.Tensor, l2: float) -> torch.Tensor:
    """K-wise Bradley-Terry loss of the linear reward ``features @ weight``, plus ``l2 * |weight|^2``.

    weight: [H]; features: [B, K, H] (any values in padding slots); ranks: [B, K] as in
    ``reward.losses.kwise_loss`` (1 best, ties equal, 0 = no reply). Returns a scalar.
    """
    return kwise_loss(features @ weight, ranks) + l2 * weight.pow(2).sum()


def pair_differences(features: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, weights)``: d [P, H] the feature difference (better minus worse) of every ranked pair, and
    weights [P] such that ``sum_p weights_p * softplus(-d_p @ w)`` equals ``kwise_loss(features @ w,
    ranks)`` exactly (each ranking's pairs averaged, then rankings averaged): the K-wise loss is a
    weighted logistic regression on pair differences. Raises ValueError when no ranking has a pair."""
    from reward.losses import pair_mask

    mask = pair_mask(ranks)
    b, i, j = mask.nonzero(as_tuple=True)
    per_row = mask.sum(dim=(1, 2))
    rows = int((per_row > 0).sum())
    if rows == 0:
        raise ValueError("no ranking has two replies with distinct ranks")
    return features[b, i] - features[b, j], 1.0 / (per_row[b].double() * rows)


NEWTON_MAX_UNKNOWNS = 2048  # above this the [r, r] Hessian costs more than L-BFGS's many cheap steps


@contextmanager
def one_thread():
    """Run small linear algebra on one thread: a fit's matrices are a few hundred wide, too small to
    share, and on a loaded 2-core machine torch's worker threads waiting for each other made one fit
    take 10 s instead of 0.3."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PairProblem:
    """The probe's convex problem on one set of rankings, prepared once for any number of L2 strengths.

    ``pair_differences`` turns the K-wise loss into a weighted logistic regression, and its optimum lies
    in the span of the pair differences (the L2 term zeroes any other component), so ``fit`` runs in an
    orthonormal basis of that span (QR of the differences: at most min(pairs, H) unknowns) by Newton's
    method with a backtracking line search: ~10 steps where L-BFGS on the [B, K, H] form took hundreds,
    which makes the gate's hundred fits to shuffled rankings (``reward.schedule.probe_chance_null``)
    affordable. L-BFGS on the reduced form where the span is too wide for a Hessian, or for l2 = 0.
    """

    def __init__(self, features: torch.Tensor, ranks: torch.Tensor):
        d, self.weights = pair_differences(features.double(), ranks)
        with one_thread():
            self.basis = torch.linalg.qr(d.T).Q if d.shape[0] < d.shape[1] else None  # [H, r]; None: H itself
            self.a = d @ self.basis if self.basis is not None else d  # [P, r]

    def objective(self, z: torch.Tensor, l2: float) -> torch.Tensor:
        return (self.weights * torch.nn.functional.softplus(-(self.a @ z))).sum() + l2 * z.dot(z)

    def fit(self, l2: float, max_iter: int = 100) -> torch.Tensor:
        """The weight [H] minimising ``probe_loss`` for this ``l2``."""
        with one_thread():
            z = self._lbfgs(l2) if l2 <= 0 or self.a.shape[1] > NEWTON_MAX_UNKNOWNS else self._newton(l2, max_iter)
            return self.basis @ z if self.basis is not None else z

    def _newton(self, l2: float, max_iter: int) -> torch.Tensor:
        a, weights = self.a, self.weights
        z = torch.zeros(a.shape[1], dtype=torch.float64)
        ridge = 2 * l2 * torch.eye(a.shape[1], dtype=torch.float64)
        value = self.objective(z, l2)
        for _ in range(max_iter):
            q = torch.sigmoid(-(a @ z))  # 1 - sigmoid(margin)
            grad = 2 * l2 * z - a.T @ (weights * q)
            hessian = (a * (weights * q * (1 - q)).unsqueeze(1)).T @ a + ridge
            step = torch.linalg.solve(hessian, grad)
            decrement = float(grad.dot(step))  # the Newton decrement, squared
            if decrement <= 1e-18:
                break
            t = 1.0
            while True:  # Armijo backtracking: near the optimum the full step is taken
                candidate = z - t * step
                new = self.objective(candidate, l2)
                if new <= value - 0.25 * t * decrement or t < 1e-12:
                    break
                t *= 0.5
            z, value = candidate, new
        return z

    def _lbfgs(self, l2: float) -> torch.Tensor:
        z = torch.zeros(self.a.shape[1], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([z], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = self.objective(z, l2)
            loss.backward()
            return loss

        optimizer.step(closure)
        return z.detach()


def fit_probe(features: torch.Tensor, ranks: torch.Tensor, l2: float, max_iter: int = 100) -> torch.Tensor:
    """The weight [H] minimising ``probe_loss`` (convex, strictly for l2 > 0: one optimum); see ``PairProblem``."""
    return PairProblem(features, ranks).fit(l2, max_iter)


@dataclass
class Probe:
    """A fitted linear reward: ``score(x) = ((x - mean) / std) @ weight``.

    feature: which features it reads (``"last@30"``); l2: the chosen strength; selection: the
    validation loss and accuracy of every strength tried (recorded for the model card).
    """

    feature: str
    weight: torch.Tensor  # [H] float64, on standardised features
    mean: torch.Tensor  # [H]
    std: torch.Tensor  # [H]
    l2: float
    selection: list[dict] = field(default_factory=list)
    support: dict | None = None  # ``probe_support``: where it may be trusted

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., H] -> rewards [...] (float64)."""
        return standardise(features, self.mean, self.std) @ self.weight

    def head_weight(self) -> torch.Tensor:
        """[H]: the same reward on raw features up to a constant (``-mean/std @ weight``), which no
        ranking, pair or PPO's reward centring depends on. A score head has no bias: this is it."""
        return self.weight / self.std.double()


def probe_support(probe: Probe, features: torch.Tensor, ranks: torch.Tensor,
                  reply: torch.Tensor | None = None, marker: list[int] | None = None) -> dict:
    """Where ``probe`` may be trusted (``rlhf.modeling.use_score_support``), from the [B, K, H] features
    of the replies it was fitted on (rank > 0): ``worst`` the features of the one it scores lowest;
    ``mean``, ``std`` and ``bound`` (the largest root-mean-square standardised distance) of the
    features the support measures: ``reply`` ([B, K, H], the mean over each reply's own tokens, after
    ``marker``, which is recorded as ``reply_marker``), else the probe's own (and its standardisation).
    JSON-ready (lists and floats)."""
    present = features[ranks > 0].double()
    worst = present[int(probe.scores(present).argmin())]
    if reply is None:
        measured, mean, std = present, probe.mean, probe.std
    elif not marker:
        raise ValueError("reply features need the marker they were measured after")
    else:
        measured = reply[ranks > 0].double()
        mean, std = feature_stats(reply, ranks)
    rms = standardise(measured, mean, std).pow(2).mean(-1).sqrt()
    out = {"mean": mean.float().tolist(), "std": std.float().tolist(), "bound": float(rms.max()),
           "worst": worst.float().tolist(), "replies": int(present.shape[0])}
    if reply is not None:
        out["reply_marker"] = list(marker)
    return out


def standardise(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (features.double() - mean.double()) / std.double()


def feature_stats(features: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [H] over the present replies (rank > 0) of [B, K, H] features; std floored so a
    constant feature does not divide by zero."""
    present = features[ranks > 0].double()
    return present.mean(0), present.std(0).clamp_min(1e-6)


def pair_accuracy(scores: torch.Tensor, ranks: torch.Tensor) -> float:
    """Share of ranked pairs whose better reply scores higher (an exact tie counts half)."""
    better = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & (ranks > 0).unsqueeze(2) & (ranks > 0).unsqueeze(1)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)
    credit = (diff > 0).double() + 0.5 * (diff == 0).double()
    return float(credit[better].mean()) if bool(better.any()) else math.nan


def select_l2(feature: str, train_x: torch.Tensor, train_ranks: torch.Tensor, val_x: torch.Tensor,
              val_ranks: torch.Tensor, grid: tuple[float, ...] = L2_GRID, refit: bool = True) -> Probe:
    """Fit one probe per L2 strength on the training rankings, keep the strength whose validation
    loss (K-wise Bradley-Terry, unregularised) is lowest, and (``refit``) fit it again on training
    and validation rankings together. Standardisation statistics come from the data it is fit on.

    train_x, val_x: [B, K, H] features of each ranking's replies; *_ranks: [B, K].
    """
    mean, std = feature_stats(train_x, train_ranks)
    tx, vx = standardise(train_x, mean, std), standardise(val_x, mean, std)
    selection = []
    problem = PairProblem(tx, train_ranks)
    for l2 in grid:
        weight = problem.fit(l2)
        val_scores = vx @ weight
        selection.append({"l2": l2, "val_loss": float(kwise_loss(val_scores, val_ranks)),
                          "val_accuracy": pair_accuracy(val_scores, val_ranks),
                          "train_accuracy": pair_accuracy(tx @ weight, train_ranks)})
    best = min(selection, key=lambda s: s["val_loss"])
    if not refit:
        return Probe(feature, problem.fit(best["l2"]), mean, std, best["l2"], selection)
    all_x = torch.cat([pad_k(train_x, val_x.shape[1]), pad_k(val_x, train_x.shape[1])])
    all_ranks = torch.cat([pad_k(train_ranks, val_ranks.shape[1]), pad_k(val_ranks, train_ranks.shape[1])])
    mean, std = feature_stats(all_x, all_ranks)
    weight = fit_probe(standardise(all_x, mean, std), all_ranks, best["l2"])
    return Probe(feature, weight, mean, std, best["l2"], selection)


def pad_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pad dim 1 (the K replies of a ranking) with zeros up to ``k`` slots (rank 0 = no reply)."""
    if x.shape[1] >= k:
        return x
    shape = list(x.shape)
    shape[1] = k - x.shape[1]
    return torch.cat([x, x.new_zeros(shape)], dim=1)


def write_score_head(model, probe: Probe) -> None:
    """Put the probe into ``model.score`` so the model scores replies as the probe does.

    A probe on the last token of the last layer (``last@<num_hidden_layers>``) is a plain score head;
    a mean-pooled one (``mean@<num_hidden_layers>``) needs ``use_mean_pooling`` first; a probe on a
    lower layer needs the layers above it dropped first (``rlhf.modeling.keep_bottom_layers``).
    """
    n_layers = model.config.num_hidden_layers
    pooling = "mean" if getattr(model.config, "score_pooling", None) == "mean" else "last"
    if probe.feature != f"{pooling}@{n_layers}":
        raise ValueError(f"probe on {probe.feature} cannot be this model's score head (needs {pooling}@{n_layers}"
                         + (", or use_mean_pooling for mean@" + str(n_layers) if pooling == "last" else "") + ")")
    with torch.no_grad():
        model.score.weight.copy_(probe.head_weight().to(model.score.weight.dtype).unsqueeze(0))
