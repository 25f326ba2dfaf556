"""Knock heads out and measure what the task's own in-context score loses (Olsson et al. 2022,
Argument 4: "when we directly 'knock out' induction heads in small models at test-time, the
amount of in-context learning greatly decreases").

The task names the score (`Task.knockout_metric`, a probe metric that is 0 where the model
learns nothing in context, e.g. the text task's in-context score). For every member, on its own
probe batch (`Task.probe` from the member's probe key and task parameters, `batch` sequences),
the score is measured clean and with a set of heads ablated at once:

- mean-ablation: each head's output replaced by its mean over a batch of the member's training
  distribution (`Task.sample`, `batch` sequences from a key of its own) and every position;
- zero-ablation: each head's output replaced by zero.

The sets, per member: every head alone; then for k = 2..`k_max` the k heads with the highest
prefix-matching score (the heads Olsson et al. call induction heads on text; the analysis'
`prefix_matching_score` on repeated random tokens) and, as the control, k-subsets of the other
heads (all of them, or `max_controls` drawn without replacement from a fixed seed when there are
more). k = 1's named head and controls are among the single heads.

The fraction of the score lost by an ablation is (ablated - clean) / (0 - clean): 1 = all of
the in-context score gone, 0 = none, above 1 = worse than none, negative = improved. It is
undefined (NaN) where the clean score is not on the learning side of 0 by `min_clean`.
docs/analysis.md ("Knock-outs") defines the outputs.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.analysis.behaviour import _mean_head_outputs
from induction_jax.functional import apply

# Folded into a member's data key for the batch its head means are taken on: above every training
# step (the batch of step s is fold_in(data_key, s)) and apart from MEMBER_DATA (2**32 - 1).
KNOCKOUT_DATA = 2**32 - 2
MODES = ("mean", "zero")


def head_sets(prefix_LH: np.ndarray, k_max: int, max_controls: int = 32, seed: int = 0):
    """One member's ablation sets, `(kinds, ks, sets [S, L, H] 0/1)`: every head alone (kind
    `single`, k = 1), then for k = 2..k_max the top-k heads by `prefix_LH` (`named`) and the
    control k-subsets of the other heads (`control`). The number of sets depends only on the
    shape, so every member has the same."""
    L, H = prefix_LH.shape
    n = L * H
    order = np.argsort(-prefix_LH.ravel(), kind="stable")
    kinds, ks, sets = [], [], []

    def add(kind, k, heads):
        m = np.zeros(n, np.float32)
        m[list(heads)] = 1.0
        kinds.append(kind)
        ks.append(k)
        sets.append(m.reshape(L, H))

    for h in range(n):
        add("single", 1, [h])
    rng = np.random.default_rng(seed)
    for k in range(2, min(k_max, n // 2) + 1):
        named = order[:k]
        add("named", k, named)
        rest = sorted(set(range(n)) - set(named.tolist()))
        subsets = list(itertools.combinations(rest, k))
        if len(subsets) > max_controls:
            subsets = [subsets[i] for i in sorted(rng.choice(len(subsets), max_controls, replace=False))]
        for s in subsets:
            add("control", k, s)
    return kinds, ks, np.stack(sets)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _member(cfg, metric: str, batch_size: int, params, inputs, probe_key, data_key, sets_SLH):
    """One member: its score clean `[]` and under every set and mode `[2, S]`, through the
    analysis' own ablations (`apply`'s `head_mask_LH` / `head_replace_LBTHD`, the head means as
    `behaviour._mean_head_outputs` takes them)."""
    task, V = cfg.task, cfg.model.d_vocab
    probe = task.probe(probe_key, inputs, batch_size, V)
    sample = task.sample(jax.random.fold_in(data_key, KNOCKOUT_DATA), inputs, batch_size, V)
    mean_LHD = _mean_head_outputs(params, sample["tokens"])

    def score(**ablation):
        logits, acts = apply(params, probe["tokens"], return_activations=True, **ablation)
        return task.probe_metrics(logits, acts, probe)[metric]

    def ablated(set_LH):
        zero = score(head_mask_LH=1.0 - set_LH)
        mean = score(head_mask_LH=1.0 - set_LH, head_replace_LBTHD=(set_LH[..., None] * mean_LHD)[:, None, None])
        return jnp.stack([mean, zero])

    return score(), jax.lax.map(ablated, sets_SLH).T


def fraction_lost(clean, ablated, direction: int, min_clean: float = 1e-3):
    """(ablated - clean) / (0 - clean), elementwise (`clean` broadcast against `ablated`); NaN
    where the clean score is not past 0 by `min_clean` on the side it improves to (`direction`:
    +1 higher is better, -1 lower)."""
    clean, ablated = np.broadcast_arrays(np.asarray(clean, np.float64), np.asarray(ablated, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(direction * clean > min_clean, (ablated - clean) / -clean, np.nan)


def knockout(cfg, params: dict, members, prefix_ELH: np.ndarray, k_max: int = 2, batch_size: int = 512,
             max_controls: int = 32, what: str | None = None, stream=None) -> dict:
    """Every member's knock-outs (module docstring): `clean [E]`, `mean`/`zero` `[E, S]` (the
    score under each set), their `fraction_lost_*`, and the sets (`kinds`, `ks`, `sets [E, S, L,
    H]`); `params` stacked `[E, ...]` in circuit layout, `members` the run's table. One member
    per call of one compiled program: with `what` (what an interruption leaves), a signal stops
    it within seconds (`signals.run`); with `stream`, a progress bar counts the members."""
    from induction_jax import ensemble, signals
    from induction_jax.progress import ProgressBar
    from induction_jax.training import member_keys, member_task_params, shared_arrays

    task = cfg.task
    metric = task.knockout_metric
    built = [head_sets(np.asarray(p), k_max, max_controls, seed=e) for e, p in enumerate(prefix_ELH)]
    kinds, ks = built[0][0], built[0][1]
    sets = np.stack([b[2] for b in built])
    init = jnp.asarray(members.init_seed, jnp.uint32)
    data = jnp.asarray(members.data_seed, jnp.uint32)
    _, data_keys, probe_keys = jax.vmap(lambda i, d: member_keys(cfg, i, d))(init, data)
    task_params = ensemble.task_arrays(cfg, members)
    inputs = jax.vmap(lambda k, tp: member_task_params(cfg, k, tp))(data_keys, task_params)
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    shared, E = shared_arrays(cfg), len(sets)
    program = ensemble.program_config(cfg)      # one program per model and task, whatever the run's length
    bar = (ProgressBar(E, stream=stream, log_every=5.0, metric=None, name="knock-outs", unit="members")
           if stream is not None else None)
    sets_j = jnp.asarray(sets)

    def member(e):                  # the result fetched here: the wait is what a signal must cut short
        p, tp, pk, dk, ss = jax.tree.map(lambda x: x[e], (jparams, inputs, probe_keys, data_keys, sets_j))
        return jax.device_get(_member(program, metric, batch_size, p, {**(tp or {}), **shared}, pk, dk, ss))

    parts = []
    for e in range(E):
        parts.append(signals.run(member, e, what=what) if what else member(e))
        if bar:
            bar.update(e + 1)
    if bar:
        bar.close()
    clean = np.array([p[0] for p in parts], np.float64)
    ablated = np.stack([p[1] for p in parts]).astype(np.float64)
    direction = task.metric(metric).direction
    out = {"metric": metric, "direction": direction, "kinds": kinds, "ks": np.asarray(ks), "sets": sets,
           "prefix_matching_sum": np.einsum("eslh,elh->es", sets, np.asarray(prefix_ELH, np.float64)),
           "clean": clean}
    for i, mode in enumerate(MODES):
        out[mode] = ablated[:, i]
        out[f"fraction_lost_{mode}"] = fraction_lost(clean[:, None], ablated[:, i], direction)
    return out


def head_names(set_LH: np.ndarray) -> str:
    """`L1H2+L1H3`: the heads a set ablates."""
    return "+".join(f"L{layer}H{h}" for layer, h in zip(*np.nonzero(set_LH)))


def summary(result: dict) -> list[dict]:
    """Per member: for each k, the named heads, the fraction of the score their ablation loses, and
    the controls' mean, median and largest (mean-ablation; zero-ablation beside it)."""
    kinds, ks = np.asarray(result["kinds"]), result["ks"]
    rows = []
    for e in range(len(result["clean"])):
        row = {"member": e, "metric": result["metric"], "clean": float(result["clean"][e]), "by_k": []}
        for k in sorted(set(ks.tolist())):
            if k == 1:
                singles = np.flatnonzero(kinds == "single")
                named = [singles[int(np.argmax(result["prefix_matching_sum"][e, singles]))]]
                controls = [s for s in singles if s != named[0]]
            else:
                named = np.flatnonzero((kinds == "named") & (ks == k)).tolist()
                controls = np.flatnonzero((kinds == "control") & (ks == k)).tolist()
            entry = {"k": int(k), "heads": head_names(result["sets"][e, named[0]])}
            for mode in MODES:
                f = result[f"fraction_lost_{mode}"][e]
                c = f[controls]
                entry[mode] = {"named": float(f[named[0]]), "controls_mean": float(np.mean(c)),
                               "controls_median": float(np.median(c)), "controls_max": float(np.max(c)),
                               "n_controls": len(controls)}
            row["by_k"].append(entry)
        rows.append(row)
    return rows


def table(result: dict) -> tuple[list[str], list[list]]:
    """knockout.csv: one row per member and set."""
    header = ["member", "kind", "k", "heads", "prefix_matching_sum", f"clean_{result['metric']}",
              *(f"{m}_ablated" for m in MODES), *(f"fraction_lost_{m}" for m in MODES)]
    rows = []
    for e in range(len(result["clean"])):
        for s, (kind, k) in enumerate(zip(result["kinds"], result["ks"])):
            rows.append([e, kind, int(k), head_names(result["sets"][e, s]),
                         f"{result['prefix_matching_sum'][e, s]:.6g}",
                         f"{result['clean'][e]:.6g}", *(f"{result[m][e, s]:.6g}" for m in MODES),
                         *(f"{result[f'fraction_lost_{m}'][e, s]:.6g}" for m in MODES)])
    return header, rows
