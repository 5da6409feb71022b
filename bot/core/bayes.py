"""The `bayes` promotion rule: a sequential design whose prior over effect sizes is learned from the campaign itself.

Everything is in units of the noise sd of one run. A change's true improvement `theta` (positive: better) has a
prior on the grid `GRID`; it starts from `default_prior()` (documented in docs/policy.md) and is re-estimated from
every decided experiment of the campaign (`learn`: empirical Bayes, the default counting as `PRIOR_STRENGTH`
experiments). The likelihood of an experiment's runs is exact for Gaussian runs: the champion's mean is integrated
out, and a candidate's run and the champion's run with the same seed are correlated by `pair_correlation` when the
change pairs, a share `pair_share` of changes (both learned from every experiment's runs, its screen's included),
and not at all otherwise (a change of shape draws a different model from the same seed).

After each run the rule compares, from the posterior:
- promoting now: worth the expected improvement, allowed only when the posterior probability that the change is no
  better (`lfdr`) is within the campaign's budget (`promotion_limit`: the expected share of false promotions over
  the campaign at most `fdr`), never on fewer than `min_runs` candidate runs, and never before the noise sd has
  MIN_NOISE_DF degrees of freedom;
- stopping (a loss): worth 0;
- k more runs (k up to the cap): the expected value of deciding then, less k times the improvement a run buys in
  this campaign (`run_value`: what the campaign's promotions gained per run so far, from a default);
and does what is worth most. The budget keeps the expected share of false promotions <= fdr (when the prior fits,
which the campaign's own history is there for). Each reason names these numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from bot.core.records import CampaignPrior, Decision, Evidence, oriented

GRID = np.round(np.arange(-8.0, 8.0 + 1e-9, 0.25), 2)  # true improvements the prior is put on, in noise sds
NULL, BETTER = GRID <= 0, GRID > 0
# the documented default prior: most changes do nothing or harm, a few help
DEFAULT_NULL, DEFAULT_HARMFUL, DEFAULT_HARM_SD = 0.60, 0.25, 2.0  # harm: -|N(0, 2)|
DEFAULT_WIN_LOW, DEFAULT_WIN_HIGH = 0.25, 4.0  # the rest help, uniform over 0.25-4 sds
PRIOR_STRENGTH = 20.0  # the default prior counts as this many decided experiments
DEFAULT_RUN_VALUE = 0.1  # improvement (sds) a run buys before the campaign has shown its own
RUN_VALUE_STRENGTH = 50.0  # ... counted as this many runs
PAIR_TEST = float(special.chdtri(2, 0.01))  # pairing is used once the data shows it at the 1% level
PAIR_CORRELATIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95)  # the same-seed correlations pairing is fitted on
PAIR_SHARES = np.linspace(0.05, 1.0, 20)  # ... and the shares of changes that pair
PAIRING_ROUNDS = 2  # learn: pairing and the effect sizes are fitted in turn, each given the other's last fit
EM_STEPS = 40
MIN_NOISE_DF = 6  # a promotion waits for a noise sd measured with this many degrees of freedom
LFDR_CAP = 0.15  # the most P(no better) one promotion may have, whatever the campaign's budget
SD_NODES = 12  # quadrature nodes over the noise sd's posterior (`noise_sds`)


def default_prior() -> CampaignPrior:
    """The prior before a campaign has decided anything."""
    harm = NULL & (GRID < 0)
    w = np.where(GRID == 0, DEFAULT_NULL, 0.0)
    half_normal = np.exp(-0.5 * (GRID / DEFAULT_HARM_SD) ** 2) * harm
    w += DEFAULT_HARMFUL * half_normal / half_normal.sum()
    win = (GRID >= DEFAULT_WIN_LOW) & (GRID <= DEFAULT_WIN_HIGH)
    w += (1 - DEFAULT_NULL - DEFAULT_HARMFUL) * win / win.sum()
    return CampaignPrior(effects=GRID.tolist(), weights=w.tolist(), run_value=DEFAULT_RUN_VALUE)


# --------------------------------------------------------------------------------------------- noise and pairing
def _ss(xs: Sequence[float]) -> tuple[float, int]:
    """Sum of squared residuals around the mean, and its degrees of freedom."""
    if len(xs) < 2:
        return 0.0, 0
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs), len(xs) - 1


def _champion(ev: Evidence) -> tuple[float, ...]:
    """Which champion the evidence was measured against: its inherited runs, or (no win made it) its first run."""
    return tuple(ev.champion[:max(ev.champion_inherited, 1)])


def noise(ev: Evidence, prior: CampaignPrior | None) -> tuple[float, int]:
    """The residual sum of squares (metric units squared) and degrees of freedom of the noise: the campaign's pool
    (`learn`), the champion's own runs in place of those of them the pool holds, and the candidate's runs after
    its first. Never a run whose spread was selected: a candidate's first (the screen goes on when it was lucky)
    and the runs a champion inherited from its win (a promotion chose them, for agreeing among others)."""
    ss, df = _ss(ev.candidate[1:])
    own = ev.champion[ev.champion_inherited:]
    a, b = _ss(own)
    ss, df = ss + a, df + b
    if prior is not None and prior.noise_sd is not None:
        ss, df = ss + prior.noise_sd**2 * prior.noise_df, df + prior.noise_df
        if prior.champion_runs and own[:len(prior.champion_runs)] == prior.champion_runs:
            a, b = _ss(prior.champion_runs)
            ss, df = ss - a, df - b
    return ss, df


def noise_sds(ss: float, df: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of the noise sd given (ss, df), with the log of their weights, to integrate over its posterior: under
    a flat prior on log sd, ss / sd^2 is chi-square on df degrees of freedom, a Gamma(df / 2) of ss / (2 sd^2), and
    Gauss quadrature for that Gamma (Golub-Welsch on the generalized Laguerre recurrence, stable at any df) weighs
    the tails too: a noise sd measured on few runs may be low by luck, and a decision at P(no better) 0.05 turns on
    that tail."""
    k, a = np.arange(SD_NODES), df / 2 - 1
    off = np.sqrt(k[1:] * (k[1:] + a))
    x, vectors = np.linalg.eigh(np.diag(2 * k + a + 1.0) + np.diag(off, 1) + np.diag(off, -1))
    return np.sqrt(ss / (2 * x)), 2 * np.log(np.abs(vectors[0]))


def median_sd(ss: float, df: int) -> float:
    """The posterior median of the noise sd given (ss, df): the one a decision's reason names."""
    return float(np.sqrt(ss / special.chdtri(df, 0.5)))


Runs = tuple[tuple[float, ...], tuple[float, ...], tuple[tuple[int, int], ...]]  # champion's, candidate's, pairs


def _runs(ev: Evidence) -> Runs:
    """The champion's and the candidate's runs, oriented (lower is better), and their pairs (`_pairs`)."""
    return tuple(oriented(ev.champion, ev.direction)), tuple(oriented(ev.candidate, ev.direction)), tuple(_pairs(ev))


def _pairs(ev: Evidence) -> list[tuple[int, int]]:
    """(champion index, candidate index) of each seed both have a value for."""
    where = {s: i for i, s in enumerate(ev.champion_seeds or range(len(ev.champion)))}
    return [(where[s], j) for j, s in enumerate(ev.candidate_seeds or range(len(ev.candidate))) if s in where]


def pairing(runs: Sequence[Runs], sd: float, weights: np.ndarray) -> tuple[float, float]:
    """(share of changes that pair, their same-seed correlation), by maximum likelihood over every experiment's runs,
    its screen's included (most experiments end at one run, whose closeness to the champion's same-seed run is all
    they say about pairing): each experiment's likelihood under "pairs at rho" and "does not pair", theta
    integrated out under the effect prior `weights`, for rho on PAIR_CORRELATIONS and the share on PAIR_SHARES.
    Pairing counts only where the data shows it: the mixture must fit better than "nothing pairs" by the
    likelihood-ratio test at PAIR_TEST (two parameters); otherwise (0, 0)."""
    data = [r for r in runs if r[2]]
    if not data:
        return 0.0, 0.0
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
        log_share, log_rest = np.log(PAIR_SHARES)[:, None], np.log(1 - PAIR_SHARES)[:, None]

    def marginals(rho: float) -> np.ndarray:
        return special.logsumexp(log_w + _components(data, rho, sd), axis=1)

    apart = marginals(0.0)
    gain, share, rho = 0.0, 0.0, 0.0
    for r in PAIR_CORRELATIONS:
        ratio = marginals(r) - apart  # each experiment's log-likelihood ratio, pairs at r against not
        gains = np.logaddexp(log_share + ratio, log_rest).sum(1)
        i = int(np.argmax(gains))
        if gains[i] > gain:
            gain, share, rho = float(gains[i]), float(PAIR_SHARES[i]), float(r)
    return (share, rho) if 2 * gain >= PAIR_TEST else (0.0, 0.0)


# --------------------------------------------------------------------------------------------- likelihood
@functools.lru_cache(maxsize=4096)
def _design(m: int, n: int, pairs: tuple[tuple[int, int], ...],
            rho: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """What the likelihood of m champion and n candidate runs needs of their correlation (same-seed runs correlate
    by rho), the champion's mean integrated out: the projection P, z P (z marks the candidate's runs), z P z and the
    constant. Cached: it depends on the runs' count and pairing only, never on their values or the noise sd."""
    cov = np.eye(m + n)
    for i, j in pairs:
        cov[i, m + j] = cov[m + j, i] = rho
    inv = np.linalg.inv(cov)
    one, z = np.ones(m + n), np.concatenate([np.zeros(m), np.ones(n)])
    a = one @ inv @ one
    proj = inv - np.outer(inv @ one, one @ inv) / a
    return proj, z @ proj, float(z @ proj @ z), float(-0.5 * np.linalg.slogdet(cov)[1] - 0.5 * math.log(a))


@functools.lru_cache(maxsize=65536)
def _forms(h: tuple[float, ...], c: tuple[float, ...], pairs: tuple[tuple[int, int], ...],
           rho: float) -> tuple[float, float, float, float]:
    """y P y, z P y, z P z and the constant (`_design`) of one experiment's runs y = (h, c) in metric units. Cached:
    learning reads every decided experiment's at each decision, and only the noise sd they are scaled by moves."""
    proj, zp, zpz, const = _design(len(h), len(c), pairs, rho)
    y = np.array(h + c)
    return float(y @ proj @ y), float(zp @ y), zpz, const


def _components(data: Sequence[Runs], rho: float, sd: float) -> np.ndarray:
    """log p(runs | theta) on GRID (a row per experiment) for runs in metric units, oriented, with noise sd `sd`, the
    champion's mean integrated out, when same-seed runs correlate by rho."""
    forms = np.array([_forms(h, c, pairs if rho else (), float(rho)) for h, c, pairs in data])
    ypy, zpy, zpz, const = forms.T[:, :, None]
    # the candidate's mean is the champion's less theta: residual y / sd - mu + theta z
    return const - 0.5 * (ypy / sd**2 + 2 * GRID * zpy / sd + GRID**2 * zpz)


def loglik(runs: Sequence[Runs], sd: float, share: float, rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log p(runs | theta) on GRID, a row per experiment, and each component's (pairs, does not pair) with its prior
    share folded in; an experiment with no same-seed pair has the unpaired one alone."""
    apart = _components(runs, 0.0, sd)
    pairs = np.array([bool(p) for _, _, p in runs])[:, None]
    if rho <= 0 or share <= 0 or not pairs.any():  # a decision's one experiment without a same-seed pair, mostly
        return apart, np.full_like(apart, -np.inf), apart
    share = min(share, 1 - 1e-9)
    paired = np.where(pairs, _components(runs, rho, sd) + math.log(share), -np.inf)
    apart = apart + np.where(pairs, math.log(1 - share), 0.0)
    return np.logaddexp(paired, apart), paired, apart


def marginal(ev: Evidence, ss: float, df: int, share: float, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """log p(runs | theta) on GRID with the noise sd integrated over its posterior (`noise_sds`), and its pairing
    component."""
    n, runs = len(ev.champion) + len(ev.candidate), [_runs(ev)]
    both, paired = [], []
    for sd, weight in zip(*noise_sds(ss, df)):
        ll, pl, _ = (x[0] for x in loglik(runs, float(sd), share, rho))
        jac = -(n - 1) * math.log(sd)  # runs in metric units, the champion's mean flat in them
        both.append(ll + jac + weight)
        paired.append(pl + jac + weight)
    return special.logsumexp(both, axis=0), special.logsumexp(paired, axis=0)


def log_joint(prior: np.ndarray, ll: np.ndarray) -> np.ndarray:
    """log prior + log-likelihood, -inf where the prior is 0. In logs, so that runs far outside the prior's support
    (where the likelihood of every supported theta underflows) still give a posterior, never 0 / 0."""
    with np.errstate(divide="ignore"):
        return np.log(prior) + ll


def posterior(prior: np.ndarray, ll: np.ndarray) -> np.ndarray:
    """The posterior on GRID of a prior and a log-likelihood (each row's, for a 2-d `ll`)."""
    a = log_joint(prior, ll)
    w = np.exp(a - a.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------------------- learning
def learn(history: Sequence[tuple[Evidence, Decision]]) -> CampaignPrior:
    """The prior for the campaign's next decision, from its decided experiments (`history`, oldest first; each with
    the evidence it was decided on): the pooled noise sd, the pairing, the effect-size distribution (EM on GRID,
    shrunk to the default by PRIOR_STRENGTH) and the improvement a run buys (the posterior mean of each promotion's
    improvement per candidate run made, shrunk to DEFAULT_RUN_VALUE by RUN_VALUE_STRENGTH)."""
    base = default_prior()
    decided = [(ev, d) for ev, d in history if ev.candidate and ev.candidate_status == "ok" and len(ev.champion) >= 2]
    if not decided:
        return base
    ss, df = 0.0, 0
    champions: dict[tuple[float, ...], list[float]] = {}  # each champion's own runs, the most any evidence had
    for ev, d in decided:
        if d.verdict != "win":  # a winner's runs become its champion's inherited ones
            a, b = _ss(ev.candidate[1:])
            ss, df = ss + a, df + b
        own = ev.champion[ev.champion_inherited:]
        if len(own) >= len(champions.get(_champion(ev), ())):
            champions[_champion(ev)] = own
    for xs in champions.values():
        a, b = _ss(xs)
        ss, df = ss + a, df + b
    sd = math.sqrt(ss / df) if df and ss > 0 else 0.0
    if sd <= 0:
        return base
    runs = [_runs(ev) for ev, _ in decided]
    w0 = np.asarray(base.weights)
    w = w0
    for _ in range(PAIRING_ROUNDS):
        share, rho = pairing(runs, sd, w)
        lik = loglik(runs, sd, share, rho)[0]
        w = w0
        for _ in range(EM_STEPS):
            w = (PRIOR_STRENGTH * w0 + posterior(w, lik).sum(0)) / (PRIOR_STRENGTH + len(decided))
    post = posterior(w, lik)
    wins = [p for p, (_, d) in zip(post, decided) if d.verdict == "win"]
    gained = sum(float(p @ GRID) for p in wins)
    runs = sum(len(ev.candidate) for ev, _ in decided)
    value = (DEFAULT_RUN_VALUE * RUN_VALUE_STRENGTH + gained) / (RUN_VALUE_STRENGTH + runs)
    return CampaignPrior(effects=GRID.tolist(), weights=w.tolist(), noise_sd=sd, noise_df=df, pair_share=share,
                         pair_correlation=rho, run_value=max(value, 1e-3), experiments=len(decided),
                         champion_runs=champions[_champion(decided[-1][0])], promotions=len(wins),
                         false_promotions=float(sum(p[NULL].sum() for p in wins)))


def describe(prior: CampaignPrior) -> str:
    """The prior in a few numbers, for a decision's reason."""
    w = np.asarray(prior.weights)
    better = w[BETTER].sum()
    mean_win = float(w[BETTER] @ GRID[BETTER] / better) if better > 0 else 0.0
    return (f"prior from {prior.experiments} experiments: P(better) {better:.2f} (mean {mean_win:.2f} sd), "
            f"P(no effect) {w[GRID == 0].sum():.2f}; {prior.pair_share:.2f} of changes pair at rho "
            f"{prior.pair_correlation:.2f}; a run buys {prior.run_value:.3f} sd")


# --------------------------------------------------------------------------------------------- the stopping rule
def lookahead(post: np.ndarray, var: float, made: int, more: int, fdr: float, min_runs: int,
              run_value: float) -> tuple[float, int]:
    """The best expected value of k more runs (k = 1..more), each adding an estimate of theta with variance `var`,
    then promoting where allowed and worth it, less k * run_value; and that k (0: none worth it)."""
    best, best_k = -math.inf, 0
    for k in range(1, more + 1):
        s = math.sqrt(var / k)
        est = np.linspace(GRID[0] - 4 * s, GRID[-1] + 4 * s, 240)
        joint = np.exp(-0.5 * ((est[:, None] - GRID[None, :]) / s) ** 2) * post[None, :]
        pred = joint.sum(1)
        after = joint / np.maximum(pred[:, None], 1e-300)
        mean, lfdr = after @ GRID, after[:, NULL].sum(1)
        gain = np.where((lfdr <= fdr) & (made + k >= min_runs), np.maximum(mean, 0.0), 0.0)
        value = float(pred @ gain / pred.sum()) - k * run_value
        if value > best:
            best, best_k = value, k
    return best, best_k


def promotion_limit(prior: CampaignPrior, fdr: float) -> float:
    """The P(no better) the campaign's next promotion may have: what keeps the expected share of false promotions,
    the past ones' (under the prior now) with this one, at most fdr; never above LFDR_CAP."""
    return min(LFDR_CAP, max(fdr, fdr * (prior.promotions + 1) - prior.false_promotions))
