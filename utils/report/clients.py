"""The clients run (logs_perceiver_io/clients_<cfg>.csv and clients_<cfg>_messages.csv, written by
run_pickaback/clients.sh) in numbers: Pick-a-back's devices ("clients"), each learning its own task sequence in
rounds and borrowing from its peers' networks. The report's section "Clients": per client of the default run its
accuracy matrix (task x round) against its baselines, the picks (who borrowed from whom, the pick's similarity, the
bytes received), the bytes of every round's messages by kind, and, when the comparison's runs exist, the selection
rules side by side (clients_comparison) with a one-line verdict.

The rows CSV is long: one row per (run, exchange, round, client that learned a task in that round, task the client has
learned so far); the row whose `task` is its `learned` task is the round's learning event. Rules `similar` and
`original` of the comparison run under both exchanges (`models`, `profile`): the learning is identical, only the
bytes differ, so every accuracy number is read from one exchange per run (EXCHANGES' order: models first) and the
bytes from each. The file is read by its name (utils/layout.Layout.clients_csv), never through utils.clients (a layer
the report does not import). A file that lacks a column or holds a number that is not finite or out of range is a
UserError naming the file; pandas' errors when it is torn or empty.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.checkpoint import checked_columns, number
from utils.errors import UserError
from utils.report.collect import MISSING, read_csv, whole_numbers
from utils.report.markdown import fmt, md_table

STAGE = "run_pickaback/clients.sh"       # what regenerates the files (read_csv's "rerun ... to regenerate it")
DEFAULT = "default"                      # the main run; the comparison's are "<rule>_seed<S>"
RULES = ("similar", "own", "random", "scratch", "original")        # clients.sh's SELECTIONS, in its order
EXCHANGES = ("models", "profile")        # the first present is the one the accuracies are read from
NEW = "new"                              # the pick of a learner that started a new network
COLUMNS = ("run", "rule", "exchange", "seed", "round", "client", "learned", "task", "accuracy", "baseline_acc",
           "pick", "network", "scores", "bytes_sent", "bytes_received", "params")          # those the report reads
MESSAGE_COLUMNS = ("run", "exchange", "round", "kind", "sender", "receiver", "bytes")
TEXT = ("run", "rule", "exchange", "client", "learned", "task", "pick", "network", "scores", "kind", "sender",
        "receiver")
INTEGERS = {"seed": (-math.inf, math.inf), "round": (1, math.inf), "bytes_sent": (0, math.inf),
            "bytes_received": (0, math.inf), "bytes": (0, math.inf)}
KINDS = ("baseline", "catalog", "networks", "search", "probe", "ddv", "pick", "learn")   # the coordinator's order
METRICS = ("acc", "fwt", "forgetting", "params")         # per run, then mean ± std over seeds per rule


@dataclass
class Clients:
    path: Path
    messages_path: Path
    rows: pd.DataFrame           # the rows CSV, numbers as numbers
    messages: pd.DataFrame       # the messages CSV (empty, with its columns, when the file is absent)

    @property
    def default(self):
        """The default run's rows under one exchange (models first); None when there is no default run."""
        rows = one_exchange(self.rows[self.rows.run == DEFAULT])
        return rows if len(rows) else None

    @property
    def compared(self):
        return self.rows[self.rows.run != DEFAULT]


# ---- reading -----------------------------------------------------------------------------------------------------
def read_clients(path, messages_path, groups):
    """Both CSVs as a Clients; `groups`: the config's tasks (a task outside them is an error of the file). The
    messages CSV may be absent (no bytes then)."""
    text = {c: str for c in TEXT}
    rows = read_csv(path, COLUMNS, STAGE, keep_default_na=False, dtype=text)
    if rows.empty:
        raise UserError(f"{path} holds no rows: rerun {STAGE} to regenerate it.")
    checked_columns(rows, path, {c: r for c, r in INTEGERS.items() if c in COLUMNS})
    rows = whole_numbers(rows, [c for c in INTEGERS if c in COLUMNS] + ["params"], path, STAGE)
    for col in ("accuracy", "baseline_acc"):
        rows[col] = rows[col].astype(float)
    unknown = sorted((set(rows.task) | set(rows.learned)) - set(groups))
    if unknown:
        raise UserError(f"{path} names task(s) {', '.join(unknown)} that the config does not have: rerun {STAGE} "
                        f"to regenerate it.")
    if Path(messages_path).is_file():
        messages = read_csv(messages_path, MESSAGE_COLUMNS, STAGE, keep_default_na=False, dtype=text)
        checked_columns(messages, messages_path, {c: r for c, r in INTEGERS.items() if c in MESSAGE_COLUMNS})
        messages = whole_numbers(messages, ["round", "bytes"], messages_path, STAGE)
    else:
        messages = pd.DataFrame({c: pd.Series(dtype=np.int64 if c in INTEGERS else object) for c in MESSAGE_COLUMNS})
    return Clients(Path(path), Path(messages_path), rows, messages)


def ordered(values, order):
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def one_exchange(rows):
    """Of each run's rows, those of one exchange (EXCHANGES' order): the learning is the same under both."""
    keep = []
    for _, run_rows in rows.groupby("run", sort=False):
        first = ordered(run_rows.exchange, EXCHANGES)[0]
        keep.append(run_rows[run_rows.exchange == first])
    return pd.concat(keep) if keep else rows


def learning(rows):
    """The learning events: one row per (run, exchange, round, client), that of the task it learned."""
    return rows[rows.learned == rows.task]


def pick_similarity(pick, scores):
    """sim_euc of the picked candidate among the scores (JSON list of {candidate, ..., sim_euc}); NaN for "new" or
    a pick without a score (random, own)."""
    if pick == NEW or not scores:
        return math.nan
    try:
        entries = json.loads(scores)
    except json.JSONDecodeError as e:
        raise UserError(f"the scores of pick {pick!r} are not JSON ({e}): rerun {STAGE} to regenerate the "
                        f"file.") from None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("candidate") == pick and "sim_euc" in entry:
            return number(entry["sim_euc"], f"sim_euc of candidate {pick}")
    return math.nan


# ---- the default run ---------------------------------------------------------------------------------------------
def client_matrix(rows, client):
    """(accuracy frame: index the client's tasks in the order it learned them, columns the rounds it learned in;
    NaN before a task was learned), {task: baseline accuracy}, {round: task learned}."""
    mine = rows[rows.client == client]
    events = learning(mine).sort_values("round")
    learned = dict(zip(events["round"], events.learned, strict=True))
    tasks = list(dict.fromkeys(events.learned))
    matrix = mine.pivot_table(index="task", columns="round", values="accuracy", aggfunc="first")
    matrix = matrix.reindex(index=tasks, columns=sorted(learned))
    baseline = mine.groupby("task").baseline_acc.first().to_dict()
    return matrix, baseline, learned


def picks(clients):
    """One row per learning event of the default run: round, client, learned, pick, holder, network, sim_euc of the
    pick and the bytes received under each exchange (bytes_received_<exchange>)."""
    rows = clients.rows[clients.rows.run == DEFAULT]
    events = learning(one_exchange(rows)).sort_values(["round", "client"])
    table = pd.DataFrame({"round": events["round"].to_numpy(), "client": events.client.to_numpy(),
                          "learned": events.learned.to_numpy(), "pick": events.pick.to_numpy(),
                          "holder": [p.split(":")[0] if p != NEW else "" for p in events.pick],
                          "network": events.network.to_numpy(),
                          "sim_euc": [pick_similarity(p, s) for p, s in zip(events.pick, events.scores, strict=True)]})
    for exchange in ordered(rows.exchange, EXCHANGES):
        got = learning(rows[rows.exchange == exchange]).set_index(["round", "client"]).bytes_received
        table[f"bytes_received_{exchange}"] = [got.get((r, c), math.nan)
                                               for r, c in zip(table["round"], table.client, strict=True)]
    return table


def bytes_per_round(messages, run=DEFAULT):
    """{exchange: frame (index round, columns the kinds in the coordinator's order, then "total")} of a run's
    messages."""
    mine = messages[messages.run == run]
    out = {}
    for exchange in ordered(mine.exchange, EXCHANGES):
        table = mine[mine.exchange == exchange].pivot_table(index="round", columns="kind", values="bytes",
                                                            aggfunc="sum", fill_value=0)
        table = table[ordered(table.columns, KINDS)]
        table["total"] = table.sum(axis=1)
        out[exchange] = table.astype(np.int64)
    return out


# ---- the comparison ----------------------------------------------------------------------------------------------
def run_metrics(rows):
    """The accuracy numbers of one run's rows (one exchange): acc (mean over the clients' tasks of the final
    accuracy, final = the last round's row of each (client, task)), fwt (mean over the learning events of accuracy −
    baseline_acc), forgetting (mean over the (client, task)s evaluated more than once of the max earlier accuracy −
    the final one; NaN when none was), forgetting_max (their max), params (mean over clients of the params of their
    last row)."""
    rows = rows.sort_values("round")
    final = rows.groupby(["client", "task"]).accuracy.last()
    events = learning(rows)
    drops = [float(a.iloc[:-1].max() - a.iloc[-1]) for _, a in rows.groupby(["client", "task"]).accuracy if len(a) > 1]
    return {"acc": float(final.mean()), "fwt": float((events.accuracy - events.baseline_acc).mean()),
            "forgetting": float(np.mean(drops)) if drops else math.nan,
            "forgetting_max": float(np.max(drops)) if drops else math.nan,
            "params": float(rows.groupby("client").params.last().mean()), "picks": len(events)}


def comparison_runs(frame, messages):
    """One row per comparison run (run != default): run, rule, seed, run_metrics' numbers and bytes_per_pick_<exchange>
    for each exchange it ran under (the total bytes of that run's messages / its learning events)."""
    frame = frame[frame.run != DEFAULT]
    exchanges = ordered(frame.exchange, EXCHANGES)
    out = []
    for run, rows in frame.groupby("run", sort=False):
        first = rows.iloc[0]
        entry = {"run": run, "rule": first.rule, "seed": int(first.seed),
                 **run_metrics(rows[rows.exchange == ordered(rows.exchange, EXCHANGES)[0]])}
        for exchange in exchanges:
            picked = len(learning(rows[rows.exchange == exchange]))
            sent = messages[(messages.run == run) & (messages.exchange == exchange)].bytes.sum()
            entry[f"bytes_per_pick_{exchange}"] = float(sent) / picked if picked else math.nan
        out.append(entry)
    columns = ["run", "rule", "seed", *METRICS, "forgetting_max", "picks",
               *(f"bytes_per_pick_{e}" for e in exchanges)]
    return pd.DataFrame(out, columns=columns)


def clients_comparison(frame, messages):
    """The comparison's runs by rule (index: the rules, RULES' order then others): n (seeds), <metric>_mean and
    <metric>_std over seeds (std NaN for one seed) of acc, fwt, forgetting and params (comparison_runs),
    forgetting_max (the largest over every run and task of the rule), and bytes_per_pick_<exchange> (mean over
    seeds; NaN where the rule did not run under that exchange). Empty when there is no comparison run."""
    runs = comparison_runs(frame, messages)
    exchanges = [c for c in runs.columns if c.startswith("bytes_per_pick_")]
    columns = ["n", *(f"{m}_{k}" for m in METRICS for k in ("mean", "std")), "forgetting_max", *exchanges]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    out = {}
    for rule in ordered(runs.rule, RULES):
        mine = runs[runs.rule == rule]
        entry = {"n": mine.seed.nunique()}
        for m in METRICS:
            entry[f"{m}_mean"], entry[f"{m}_std"] = float(mine[m].mean()), float(mine[m].std(ddof=1))
        entry["forgetting_max"] = float(mine.forgetting_max.max())
        for e in exchanges:
            entry[e] = float(mine[e].mean())          # NaN for a rule that did not run under it
        out[rule] = entry
    return pd.DataFrame.from_dict(out, orient="index", columns=columns)


def mean_std(cmp, rule, metric, digits=4, sign=False):
    mean, std = cmp.loc[rule, f"{metric}_mean"], cmp.loc[rule, f"{metric}_std"]
    if math.isnan(mean):
        return MISSING
    return f"{mean:{'+' if sign else ''},.{digits}f}" + ("" if math.isnan(std) else f" ± {std:,.{digits}f}")


def bytes_text(cmp, rule):
    """"N (models) / M (profile)" of the exchanges the rule ran under."""
    parts = [f"{fmt(round(cmp.loc[rule, c]))} ({c.removeprefix('bytes_per_pick_')})" for c in cmp.columns
             if c.startswith("bytes_per_pick_") and not math.isnan(cmp.loc[rule, c])]
    return " / ".join(parts) if parts else MISSING


def verdict(cmp):
    """Does borrowing pay, and at what cost? `similar` (else the first rule) against `own` (else every other rule):
    the difference of their mean final accuracies against the larger std over seeds, and the bytes per pick of
    each, as measured. One Markdown line."""
    rules = list(cmp.index)
    if len(rules) < 2:
        return f"- Only rule `{rules[0]}` was run: nothing to compare it with." if rules else ""
    focus = "similar" if "similar" in rules else rules[0]
    against = ["own"] if "own" in rules and focus != "own" else [r for r in rules if r != focus]
    judged = []
    for rule in against:
        d = cmp.loc[focus, "acc_mean"] - cmp.loc[rule, "acc_mean"]
        spread = max(cmp.loc[focus, "acc_std"], cmp.loc[rule, "acc_std"])
        if min(cmp.loc[focus, "n"], cmp.loc[rule, "n"]) < 2 or math.isnan(spread):
            word = "too few seeds to tell"
        else:
            word = ("pays" if d > spread else "costs accuracy" if -d > spread else "is within the spread over seeds") \
                + f" (spread ±{spread:.4f})"
        judged.append(f"`{rule}` {mean_std(cmp, rule, 'acc')} at {bytes_text(cmp, rule)} bytes per pick: "
                      f"{d:+.4f}, {word}")
    rest = [f"`{r}` {mean_std(cmp, r, 'acc')} at {bytes_text(cmp, r)}" for r in rules if r not in (focus, *against)]
    return (f"- Does borrowing pay? `{focus}` reaches {mean_std(cmp, focus, 'acc')} final accuracy at "
            f"{bytes_text(cmp, focus)} bytes per pick, against " + "; ".join(judged)
            + (f" (the other rules: {', '.join(rest)})" if rest else "") + ".")


# ---- the section -------------------------------------------------------------------------------------------------
FORMULAS = """Final accuracy: the accuracy of each (client, task) in the last round the client learned in; forward
transfer: a task's accuracy in the round it was learned minus its baseline accuracy (the client's own model of it);
forgetting: a task's max accuracy in earlier rounds minus its final accuracy, over the tasks evaluated more than once
(0 for CPG, which freezes a task's weights; its max over tasks is shown too); parameters: of every network a client
holds after its last round, mean over clients; bytes per pick: all the run's messages / its learning events (one per
round and learner), — where the rule did not run under that exchange. Mean ± std over seeds.
"""


def section(c, clients, figure):
    """The Markdown lines of the section "Clients"; `figure`: the file name of the picks figure (None without a
    default run). Every number shown goes to c."""
    lines = ["## Clients: devices that borrow from each other", "",
             f"From `{clients.path.name}` and `{clients.messages_path.name}`: each client learns its own task "
             f"sequence in rounds; in a round every client with a task picks a network to learn it in (its own, a "
             f"copy of a peer's, or a new one) and evaluates every task it has learned on its test set.", ""]
    if not clients.messages_path.is_file():
        lines += [f"No messages file `{clients.messages_path.name}`: bytes {MISSING}.", ""]
    rows = clients.default
    if rows is None:
        lines += [f"Run `{DEFAULT}`: {MISSING} (run {STAGE} {c.cfg.name}).", ""]
    else:
        lines += default_lines(c, clients, rows, figure)
    cmp = clients_comparison(clients.rows, clients.messages)
    return lines + (comparison_lines(c, cmp) if len(cmp) else [])


def default_lines(c, clients, rows, figure):
    first = rows.iloc[0]
    exchanges = ordered(clients.rows[clients.rows.run == DEFAULT].exchange, EXCHANGES)
    lines = [f"### Run `{DEFAULT}`: rule `{first.rule}`, seed {int(first.seed)}, exchange(s) "
             f"{', '.join(f'`{e}`' for e in exchanges)}", ""]
    if len(exchanges) > 1:
        lines += [f"The accuracies are those of exchange `{first.exchange}` (the learning is the same under every "
                  f"exchange; only the bytes differ).", ""]
    lines += ["#### Accuracy per client", "",
              "A task's accuracy in each round the client learned in (— before it was learned), against its "
              "baseline (the client's own model of the task).", ""]
    for client in ordered(rows.client, []):
        matrix, baseline, learned = client_matrix(rows, client)
        table = []
        for task, accs in matrix.iterrows():
            for r, v in accs.items():
                if not math.isnan(v):
                    c.number("clients_matrix", f"{client}|{task}", f"round{r}", float(v))
            final = float(accs.dropna().iloc[-1])
            c.number("clients_matrix", f"{client}|{task}", "baseline_acc", baseline[task])
            table.append((task, fmt(baseline[task]), *("—" if math.isnan(v) else fmt(float(v)) for v in accs),
                          fmt(final - baseline[task], sign=True)))
        params = int(rows[rows.client == client].sort_values("round").params.iloc[-1])
        c.number("clients_params", client, "params", params)
        lines += [f"**{client}** (holds {fmt(params)} parameters after its last round)", "",
                  md_table(["task", "baseline", *(f"round {r} (learned {t})" for r, t in learned.items()),
                            "final − baseline"], table), ""]
    return lines + picks_lines(c, clients, figure) + bytes_lines(c, clients)


def picks_lines(c, clients, figure):
    table = picks(clients)
    received = [col for col in table.columns if col.startswith("bytes_received_")]
    out = []
    for _, p in table.iterrows():
        item = f"{p['round']}|{p.client}"
        c.number("clients_picks", item, "learned", p.learned)
        c.number("clients_picks", item, "pick", p.pick)
        c.number("clients_picks", item, "sim_euc", p.sim_euc)
        for col in received:
            c.number("clients_picks", item, col, p[col])
        pick = p.pick if p.pick == NEW else f"{p.holder} ({p.pick.split(':', 1)[1]})" if p.holder != p.client \
            else f"own ({p.pick.split(':', 1)[1]})"
        out.append((p["round"], p.client, p.learned, pick, p.network, fmt(p.sim_euc),
                    *(fmt(int(p[col])) if not math.isnan(p[col]) else MISSING for col in received)))
    borrowed = int(((table.holder != "") & (table.holder != table.client)).sum())
    return ["#### Picks", "",
            f"Who borrowed from whom: in {borrowed} of {len(table)} learning events the learner picked a peer's "
            f"network (pick: holder (network:head); the learned task goes into a copy of it, `into`). sim_euc: the "
            f"pick's similarity (ModelDiff, higher = more similar); {MISSING} for a new network or a rule that "
            f"does not score.", "", f"![who borrowed from whom]({figure})", "",
            md_table(["round", "client", "learned", "pick", "into", "sim_euc of the pick",
                      *(f"bytes received ({col.removeprefix('bytes_received_')})" for col in received)], out), ""]


def bytes_lines(c, clients):
    per_round = bytes_per_round(clients.messages)
    if not per_round:
        return []
    lines = ["#### Bytes per round", "",
             "Every message of the run (requests and replies, Flower's ConfigRecord count), by kind.", ""]
    for exchange, table in per_round.items():
        for r, row in table.iterrows():
            for kind, v in row.items():
                c.number("clients_bytes", f"{exchange}|{r}", kind, int(v))
        total = table.sum()
        rows = [(r, *(fmt(int(v)) for v in row)) for r, row in table.iterrows()]
        rows.append(("**all**", *(fmt(int(v)) for v in total)))
        lines += [f"Exchange `{exchange}`:", "", md_table(["round", *table.columns], rows), ""]
    return lines


def comparison_lines(c, cmp):
    exchanges = [col for col in cmp.columns if col.startswith("bytes_per_pick_")]
    rows = []
    for rule, entry in cmp.iterrows():
        for key, v in entry.items():
            c.number("clients_comparison", rule, key, int(v) if key == "n" else float(v))
        rows.append((f"`{rule}`", int(entry.n), mean_std(cmp, rule, "acc"), mean_std(cmp, rule, "fwt", sign=True),
                     mean_std(cmp, rule, "forgetting"), fmt(entry.forgetting_max),
                     mean_std(cmp, rule, "params", 0),
                     *("—" if math.isnan(entry[e]) else fmt(round(entry[e])) for e in exchanges)))
    return ["### Selection rules side by side", "", FORMULAS,
            md_table(["rule", "seeds", "final accuracy", "forward transfer", "forgetting", "forgetting (max)",
                      "params per client", *(f"bytes per pick ({e.removeprefix('bytes_per_pick_')})"
                                             for e in exchanges)], rows), "",
            verdict(cmp), ""]


# ---- the figure --------------------------------------------------------------------------------------------------
def plot_picks(c, clients, path):
    """Who borrowed from whom, per round: a grid of rounds (columns) x clients (rows), each learning event's cell
    coloured by the holder of the network it picked (white: a new network), labelled with the learned task and the
    holder, an arrow from the holder's row in the round before (its network as it stood then)."""
    from utils.report.figures import plt, save_figure     # matplotlib only when a figure is drawn

    table = picks(clients)
    names = ordered(clients.default.client, [])
    rounds = sorted(set(clients.default["round"]))
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(2.0 * len(rounds) + 2.5, 0.9 * len(names) + 1.8))
    x, y = {r: i for i, r in enumerate(rounds)}, {n: i for i, n in enumerate(names)}
    for r in rounds:
        for n in names:
            ax.add_patch(plt.Rectangle((x[r] - 0.35, y[n] - 0.4), 0.7, 0.8, facecolor="#f2f2f2", edgecolor="none"))
    for _, p in table.iterrows():
        holder = p.holder
        face = colours.get(holder, "white") if holder else "white"
        i, j = x[p["round"]], y[p.client]
        ax.add_patch(plt.Rectangle((i - 0.35, j - 0.4), 0.7, 0.8, facecolor=face, alpha=0.45 if holder else 1.0,
                                   edgecolor="black" if holder else "#aaaaaa", linewidth=1,
                                   hatch=None if holder else "//"))
        source = f"new ({p.network})" if not holder else "own" if holder == p.client else f"from {holder}"
        sim = "" if math.isnan(p.sim_euc) else f"\nsim {p.sim_euc:.3f}"
        ax.text(i, j, f"{p.learned}\n{source}{sim}", ha="center", va="center", fontsize=7.5,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
        if holder and holder != p.client and holder in y:
            ax.annotate("", xy=(i - 0.35, j), xytext=(i - 0.65, y[holder]),
                        arrowprops={"arrowstyle": "->", "color": colours[holder], "linewidth": 1.6,
                                    "connectionstyle": "arc3,rad=0.2"})
    ax.set_xlim(-0.6, len(rounds) - 0.4)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xticks(range(len(rounds)), [f"round {r}" for r in rounds])
    ax.set_yticks(range(len(names)), names)
    for tick, n in zip(ax.get_yticklabels(), names, strict=True):
        tick.set_color(colours[n])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"Clients ({c.cfg.name}, run {DEFAULT}): who borrowed from whom\ncell colour and arrow = the holder "
                 f"of the picked network; hatched = a new network; grey = no task that round", fontsize=10)
    return save_figure(fig, path)
