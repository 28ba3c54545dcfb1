"""A seeded simulator of card payments, fraud and late-arriving labels.

It writes what a payments company would hand SIRA: ``events.parquet`` (one row
per transaction, with the raw PII a real feed carries: card numbers, emails,
phones, IPs; all synthetic) and ``labels.parquet`` (chargebacks and review
outcomes, each with ``known_at``, the moment the label arrived).

Behaviour, in short:
- customers with a home country, a spending level, a daily rate, an e-commerce
  habit, one or two cards and devices, and a handful of favourite terminals;
- terminals grouped into merchants, some online, in several countries and
  currencies; customers occasionally travel;
- fraud scenarios: card-testing bursts (tiny amounts, then a large one),
  compromised terminals (a terminal's transactions turn fraudulent for days),
  account takeover (new device, foreign country, night, large amounts);
- ``shift_day``: from that day the fraud mix moves to wallet takeovers at mule
  merchants with ordinary-looking amounts, and legitimate wallet use grows,
  so a model trained before the shift degrades after it (drift and retraining);
- fraud is labelled by chargebacks (log-normal delay around
  ``label_delay_days``) or faster manual reviews; a small share of legitimate
  transactions is reviewed and labelled negative.

The same configuration and seed give byte-identical files. Payment ids carry a digest of the whole
configuration (``tx<digest>-<row>``), so two simulations loaded into one workspace never share one; the
digest is spelled in letters, so no id holds a run of digits the PII scrubber could take for a card number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sira.core.errors import InvalidInput

# (country, currency, share of customers and terminals, amount units per EUR)
COUNTRIES: tuple[tuple[str, str, float, float], ...] = (
    ("SN", "XOF", 0.30, 655.957),
    ("CI", "XOF", 0.15, 655.957),
    ("FR", "EUR", 0.20, 1.0),
    ("DE", "EUR", 0.08, 1.0),
    ("GB", "GBP", 0.10, 0.85),
    ("US", "USD", 0.10, 1.08),
    ("NG", "NGN", 0.07, 1650.0),
)
CHANNELS = ("pos", "ecom", "atm", "wallet")
SCENARIOS = ("card_testing", "compromised_terminal", "account_takeover", "wallet_takeover")
# Hour-of-day profile of legitimate spending (relative weights, UTC for simplicity).
_HOUR_WEIGHTS = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.2, 0.5, 1.0, 1.6, 1.9, 2.0, 2.1,
     2.3, 2.2, 2.0, 1.9, 2.0, 2.2, 2.4, 2.3, 1.9, 1.4, 0.9, 0.5]
)
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that shapes a simulation. Same config → same files."""

    days: int = 30
    seed: int = 0
    start: date = date(2026, 9, 1)
    customers: int = 2_000
    terminals: int | None = None  # default: customers // 5
    tx_per_customer_day: float = 1.2
    fraud_rate: float = 0.01
    shift_day: int | None = None
    label_delay_days: float = 10.0  # median chargeback delay
    review_fraction: float = 0.3  # share of fraud caught by manual review (1-3 days)
    legit_review_rate: float = 0.003  # share of legitimate events reviewed and labelled negative
    max_label_delay_days: float = 90.0
    pre_shift_mix: dict[str, float] = field(
        default_factory=lambda: {"card_testing": 0.35, "compromised_terminal": 0.35, "account_takeover": 0.30}
    )
    post_shift_mix: dict[str, float] = field(
        default_factory=lambda: {
            "card_testing": 0.15, "compromised_terminal": 0.15, "account_takeover": 0.10, "wallet_takeover": 0.60,
        }
    )

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidInput:
            return InvalidInput(f"{name} {why}", details={"field": name})

        if not 1 <= self.days <= 3650:
            raise bad("days", f"must be between 1 and 3650, got {self.days}")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        if not 10 <= self.customers <= 10_000_000:
            raise bad("customers", f"must be between 10 and 10,000,000, got {self.customers}")
        if self.terminals is not None and self.terminals < 10:
            raise bad("terminals", "must be at least 10")
        if not 0 < self.tx_per_customer_day <= 100:
            raise bad("tx_per_customer_day", "must be in (0, 100]")
        if not 0 <= self.fraud_rate < 0.5:
            raise bad("fraud_rate", f"must be in [0, 0.5), got {self.fraud_rate}")
        if self.shift_day is not None and not 0 < self.shift_day < self.days:
            raise bad("shift_day", f"must fall inside the simulation (1..{self.days - 1}), got {self.shift_day}")
        if not 0 < self.label_delay_days <= self.max_label_delay_days:
            raise bad("label_delay_days", "must be positive and at most max_label_delay_days")
        if not 0 <= self.review_fraction <= 1 or not 0 <= self.legit_review_rate <= 1:
            raise bad("review_fraction", "and legit_review_rate must be in [0, 1]")
        for name, mix in (("pre_shift_mix", self.pre_shift_mix), ("post_shift_mix", self.post_shift_mix)):
            unknown = set(mix) - set(SCENARIOS)
            if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
                raise bad(name, f"must weigh scenarios among {', '.join(SCENARIOS)}")

    @property
    def n_terminals(self) -> int:
        return self.terminals if self.terminals is not None else max(20, self.customers // 5)

    @property
    def start_datetime(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = self.start.isoformat()
        return data

    @property
    def digest(self) -> str:
        """A short digest of the whole configuration, in its payments' ids: ingestion dedupes events and keys
        labels by event_id, so two simulations loaded into one workspace (the demo at another scale, the seed
        the same) must not share ids (a row number and the seed did: the second one's events were taken for
        duplicates and its fraud labels attached to the first one's payments)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10].translate(LETTERS)


# A digest's hex digits as letters (0-9 -> g-p): its digits, joined by the '-' to the row number, made runs of
# 13 or more digits, which the PII scrubber reads as card numbers when they pass Luhn ("txad3ab64397-00000007"
# holds "64397-00000007": stored as "txad3abtok_pan_...", one payment id in ten)
LETTERS = str.maketrans("0123456789", "ghijklmnop")


def payment_id(digest: str, row: int) -> str:
    """A simulated payment's id: its simulation's digest (letters only), then its row (8 digits or more, fewer
    than 13 up to a trillion rows)."""
    return f"tx{digest}-{row:08d}"


@dataclass(frozen=True)
class SimulationResult:
    events_path: Path
    labels_path: Path
    manifest_path: Path
    summary: dict[str, Any]


# -- the world -------------------------------------------------------------


@dataclass
class _World:
    home_country: np.ndarray      # customer -> country index
    amount_mu: np.ndarray         # customer -> log-mean amount (EUR)
    amount_sigma: np.ndarray
    rate: np.ndarray              # customer -> transactions per day
    ecom_share: np.ndarray
    card_numbers: list[list[str]]  # customer -> cards
    devices: list[list[str]]
    home_ip: list[str]
    emails: list[str]
    phones: list[str]
    favourites: np.ndarray        # customer -> favourite POS terminals (k)
    term_country: np.ndarray      # terminal -> country index
    term_merchant: np.ndarray     # terminal -> merchant index
    term_online: np.ndarray       # terminal -> sells online
    term_mule: np.ndarray         # terminal -> mule merchant (opens at shift)
    online_by_country: list[np.ndarray]
    pos_by_country: list[np.ndarray]


def _luhn_complete(prefixes: np.ndarray) -> list[str]:
    """Append the Luhn check digit to each 15-digit prefix (rows of digits)."""
    digits = prefixes.copy()
    # From the right of the final 16-digit number, positions 2, 4, ... are doubled:
    # in the 15-digit prefix those are the positions counted 1, 3, ... from its right.
    doubled = digits[:, ::-1][:, 0::2] * 2
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    total = doubled.sum(axis=1) + digits[:, ::-1][:, 1::2].sum(axis=1)
    check = (10 - total % 10) % 10
    full = np.concatenate([digits, check[:, None]], axis=1)
    return ["".join(map(str, row)) for row in full.tolist()]


def _build_world(cfg: SimulationConfig, rng: np.random.Generator) -> _World:
    n_c, n_t = cfg.customers, cfg.n_terminals
    shares = np.array([c[2] for c in COUNTRIES])
    shares = shares / shares.sum()
    home = rng.choice(len(COUNTRIES), size=n_c, p=shares)
    amount_mu = rng.normal(np.log(35.0), 0.55, size=n_c)
    amount_sigma = rng.uniform(0.45, 0.85, size=n_c)
    rate = rng.gamma(2.0, cfg.tx_per_customer_day / 2.0, size=n_c)
    ecom_share = rng.beta(2.0, 5.0, size=n_c)

    n_cards = np.where(rng.random(n_c) < 0.2, 2, 1)
    prefixes = np.concatenate(
        [np.full((n_cards.sum(), 1), 4), rng.integers(0, 10, size=(n_cards.sum(), 14))], axis=1
    )
    all_cards = _luhn_complete(prefixes)
    card_numbers, devices, pos = [], [], 0
    for c in range(n_c):
        card_numbers.append(all_cards[pos: pos + n_cards[c]])
        pos += n_cards[c]
        devices.append([f"dev-{c:07d}-{k}" for k in range(1 + int(rng.random() < 0.3))])
    ip_octets = rng.integers(1, 255, size=(n_c, 2))
    home_ip = [f"198.{18 + (c % 2)}.{a}.{b}" for c, (a, b) in enumerate(ip_octets.tolist())]
    emails = [f"customer{c:07d}@example.com" for c in range(n_c)]
    phones = [f"+2217{n:08d}" for n in rng.integers(0, 10**8, size=n_c).tolist()]

    term_country = rng.choice(len(COUNTRIES), size=n_t, p=shares)
    term_merchant = rng.integers(0, max(1, n_t // 2), size=n_t)
    term_online = rng.random(n_t) < 0.2
    term_mule = np.zeros(n_t, dtype=bool)
    term_mule[rng.choice(n_t, size=max(3, n_t // 50), replace=False)] = True
    term_online |= term_mule
    online_by_country, pos_by_country = [], []
    for k in range(len(COUNTRIES)):
        regular = (term_country == k) & ~term_mule
        online = np.flatnonzero(regular & term_online)
        in_person = np.flatnonzero(regular & ~term_online)
        fallback = np.flatnonzero(~term_mule)
        online_by_country.append(online if online.size else fallback)
        pos_by_country.append(in_person if in_person.size else fallback)
    favourites = np.stack([rng.choice(pos_by_country[home[c]], size=6) for c in range(n_c)])
    return _World(
        home, amount_mu, amount_sigma, rate, ecom_share, card_numbers, devices, home_ip, emails, phones,
        favourites, term_country, term_merchant, term_online, term_mule, online_by_country, pos_by_country,
    )


# -- transactions ------------------------------------------------------------


@dataclass
class _Tx:
    """Columns of a batch of transactions (parallel arrays)."""

    customer: np.ndarray
    card: np.ndarray          # index into the customer's cards
    terminal: np.ndarray
    t: np.ndarray             # seconds since the start
    amount_eur: np.ndarray
    channel: np.ndarray       # index into CHANNELS
    device: list[str | None]
    ip: list[str | None]
    fraud: np.ndarray
    scenario: list[str | None]

    @staticmethod
    def concat(parts: list["_Tx"]) -> "_Tx":
        return _Tx(
            np.concatenate([p.customer for p in parts]), np.concatenate([p.card for p in parts]),
            np.concatenate([p.terminal for p in parts]), np.concatenate([p.t for p in parts]),
            np.concatenate([p.amount_eur for p in parts]), np.concatenate([p.channel for p in parts]),
            [d for p in parts for d in p.device], [i for p in parts for i in p.ip],
            np.concatenate([p.fraud for p in parts]), [s for p in parts for s in p.scenario],
        )

    def __len__(self) -> int:
        return len(self.t)


def _legit(cfg: SimulationConfig, w: _World, rng: np.random.Generator) -> _Tx:
    n_c = cfg.customers
    counts = rng.poisson(w.rate * cfg.days)
    customer = np.repeat(np.arange(n_c), counts)
    n = customer.size
    day = rng.integers(0, cfg.days, size=n)
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    t = day * _SECONDS_PER_DAY + hour * 3600 + rng.integers(0, 3600, size=n)
    after_shift = day >= cfg.shift_day if cfg.shift_day is not None else np.zeros(n, dtype=bool)

    # Channel: the customer's e-commerce habit; wallets grow after the shift.
    u = rng.random(n)
    wallet_share = np.where(after_shift, 0.15, 0.03)
    channel = np.where(u < wallet_share, 3, np.where(u < wallet_share + w.ecom_share[customer], 1, 0))
    channel = np.where((channel == 0) & (rng.random(n) < 0.06), 2, channel)

    home = w.home_country[customer]
    traveling = (channel != 1) & (rng.random(n) < 0.02)
    terminal = w.favourites[customer, rng.integers(0, w.favourites.shape[1], size=n)]
    for i in np.flatnonzero((channel != 0) | traveling | (rng.random(n) < 0.1)):
        country = home[i]
        if traveling[i]:
            country = (country + 1 + rng.integers(0, len(COUNTRIES) - 1)) % len(COUNTRIES)
        pool = w.online_by_country[country] if channel[i] in (1, 3) else w.pos_by_country[country]
        terminal[i] = pool[rng.integers(0, pool.size)]

    amount = np.exp(rng.normal(w.amount_mu[customer], w.amount_sigma[customer]))
    amount = np.where(channel == 2, np.round(amount / 10 + 1) * 20, amount)  # ATM withdrawals: round sums
    card = np.array([rng.integers(0, len(w.card_numbers[c])) for c in customer.tolist()], dtype=np.int64)
    device = [
        w.devices[c][0] if ch in (1, 3) else None for c, ch in zip(customer.tolist(), channel.tolist())
    ]
    ip = [w.home_ip[c] if ch in (1, 3) else None for c, ch in zip(customer.tolist(), channel.tolist())]
    return _Tx(customer, card, terminal, t, amount, channel, device, ip,
               np.zeros(n, dtype=bool), [None] * n)


def _fraud_incidents(
    cfg: SimulationConfig, w: _World, rng: np.random.Generator, scenario: str, quota: int, day_lo: int, day_hi: int
) -> _Tx:
    """Fraud events of one scenario inside days [day_lo, day_hi), exactly ``quota`` of them."""
    rows: dict[str, list[Any]] = {k: [] for k in ("customer", "card", "terminal", "t", "amount", "channel", "device", "ip")}
    n_countries = len(COUNTRIES)
    mules = np.flatnonzero(w.term_mule)
    incident = 0
    while len(rows["t"]) < quota:
        incident += 1
        c = int(rng.integers(0, cfg.customers))
        card = int(rng.integers(0, len(w.card_numbers[c])))
        t0 = int(rng.integers(day_lo * _SECONDS_PER_DAY, day_hi * _SECONDS_PER_DAY))
        fraud_device = f"dev-x{cfg.seed:x}-{scenario[:2]}-{incident:06d}"
        fraud_ip = f"203.0.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}"
        mu = float(w.amount_mu[c])
        if scenario == "card_testing":
            k = int(rng.integers(4, 11))
            country = int(rng.integers(0, n_countries))
            pool = w.online_by_country[country]
            ts = t0 + np.sort(rng.integers(0, 20 * 60, size=k))
            amounts = rng.uniform(0.5, 3.0, size=k)
            amounts[-1] = rng.uniform(150, 600)
            for j in range(k):
                rows["customer"].append(c); rows["card"].append(card)
                rows["terminal"].append(int(pool[rng.integers(0, pool.size)])); rows["t"].append(int(ts[j]))
                rows["amount"].append(float(amounts[j])); rows["channel"].append(1)
                rows["device"].append(fraud_device); rows["ip"].append(fraud_ip)
        elif scenario == "compromised_terminal":
            country = int(rng.integers(0, n_countries))
            pool = w.pos_by_country[country]
            terminal = int(pool[rng.integers(0, pool.size)])
            k = int(rng.integers(5, 21))
            span = int(rng.integers(5, 15)) * _SECONDS_PER_DAY
            ts = np.minimum(t0 + np.sort(rng.integers(0, span, size=k)), day_hi * _SECONDS_PER_DAY - 1)
            victims = rng.integers(0, cfg.customers, size=k)
            for j in range(k):
                v = int(victims[j])
                rows["customer"].append(v); rows["card"].append(int(rng.integers(0, len(w.card_numbers[v]))))
                rows["terminal"].append(terminal); rows["t"].append(int(ts[j]))
                rows["amount"].append(float(np.exp(w.amount_mu[v]) * rng.uniform(2.0, 5.0)))
                rows["channel"].append(0); rows["device"].append(None); rows["ip"].append(None)
        elif scenario == "account_takeover":
            k = int(rng.integers(2, 6))
            country = int((w.home_country[c] + 1 + rng.integers(0, n_countries - 1)) % n_countries)
            pool = w.online_by_country[country]
            night = (t0 // _SECONDS_PER_DAY) * _SECONDS_PER_DAY + int(rng.integers(0, 5 * 3600))
            ts = night + np.sort(rng.integers(0, 6 * 3600, size=k))
            for j in range(k):
                rows["customer"].append(c); rows["card"].append(card)
                rows["terminal"].append(int(pool[rng.integers(0, pool.size)])); rows["t"].append(int(ts[j]))
                rows["amount"].append(float(np.exp(mu) * rng.uniform(5.0, 15.0))); rows["channel"].append(1)
                rows["device"].append(fraud_device); rows["ip"].append(fraud_ip)
        elif scenario == "wallet_takeover":
            k = int(rng.integers(2, 5))
            day_start = (t0 // _SECONDS_PER_DAY) * _SECONDS_PER_DAY
            ts = day_start + 9 * 3600 + np.sort(rng.integers(0, 10 * 3600, size=k))
            for j in range(k):
                rows["customer"].append(c); rows["card"].append(card)
                rows["terminal"].append(int(mules[rng.integers(0, mules.size)])); rows["t"].append(int(ts[j]))
                rows["amount"].append(float(np.exp(mu) * rng.uniform(0.8, 2.0))); rows["channel"].append(3)
                rows["device"].append(fraud_device); rows["ip"].append(w.home_ip[c])
        else:  # pragma: no cover - guarded by SimulationConfig
            raise InvalidInput(f"unknown scenario {scenario}")
    n = quota
    ts = np.minimum(np.array(rows["t"][:n], dtype=np.int64), cfg.days * _SECONDS_PER_DAY - 1)
    return _Tx(
        np.array(rows["customer"][:n], dtype=np.int64), np.array(rows["card"][:n], dtype=np.int64),
        np.array(rows["terminal"][:n], dtype=np.int64), ts, np.array(rows["amount"][:n], dtype=np.float64),
        np.array(rows["channel"][:n], dtype=np.int64), rows["device"][:n], rows["ip"][:n],
        np.ones(n, dtype=bool), [scenario] * n,
    )


def _split_quota(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Integer quotas per scenario that sum to ``total`` (largest remainders)."""
    names = [s for s in SCENARIOS if mix.get(s, 0) > 0]
    weights = np.array([mix[s] for s in names], dtype=float)
    raw = weights / weights.sum() * total
    quotas = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - quotas), kind="stable")[: total - quotas.sum()]:
        quotas[i] += 1
    return dict(zip(names, quotas.tolist()))


def _fraud(cfg: SimulationConfig, w: _World, rng: np.random.Generator, n_legit: int) -> _Tx:
    total = int(round(cfg.fraud_rate / (1.0 - cfg.fraud_rate) * n_legit))
    periods = [(0, cfg.days, cfg.pre_shift_mix)]
    if cfg.shift_day is not None:
        periods = [(0, cfg.shift_day, cfg.pre_shift_mix), (cfg.shift_day, cfg.days, cfg.post_shift_mix)]
    parts, assigned = [], 0
    for i, (lo, hi, mix) in enumerate(periods):
        share = total - assigned if i == len(periods) - 1 else int(round(total * (hi - lo) / cfg.days))
        assigned += share
        for scenario, quota in _split_quota(share, mix).items():
            if quota > 0:
                parts.append(_fraud_incidents(cfg, w, rng, scenario, quota, lo, hi))
    if not parts:
        return _Tx(*(np.zeros(0, dtype=np.int64),) * 3, np.zeros(0, dtype=np.int64), np.zeros(0),
                   np.zeros(0, dtype=np.int64), [], [], np.zeros(0, dtype=bool), [])
    return _Tx.concat(parts)


# -- labels ------------------------------------------------------------------


def _labels(cfg: SimulationConfig, tx: _Tx, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(tx)
    review = rng.random(n) < cfg.review_fraction
    review_delay = rng.uniform(0.5, 3.0, size=n)
    chargeback_delay = np.minimum(
        rng.lognormal(np.log(cfg.label_delay_days), 0.5, size=n), cfg.max_label_delay_days
    )
    legit_reviewed = rng.random(n) < cfg.legit_review_rate
    labelled = tx.fraud | legit_reviewed
    delay_days = np.where(tx.fraud & ~review, chargeback_delay, review_delay)
    idx = np.flatnonzero(labelled)
    return {
        "index": idx,
        "label": tx.fraud[idx],
        "source": np.where(tx.fraud[idx] & ~review[idx], "chargeback", "review"),
        "delay_s": np.round(delay_days[idx] * _SECONDS_PER_DAY).astype(np.int64),
    }


# -- output ------------------------------------------------------------------


def _timestamps(start: datetime, seconds: np.ndarray) -> pa.Array:
    base = np.datetime64(start.replace(tzinfo=None), "us")
    values = base + seconds.astype("timedelta64[s]").astype("timedelta64[us]")
    return pa.array(values, type=pa.timestamp("us", tz="UTC"))


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    tmp.replace(path)  # readers never see a half-written file


def writable_folder(out_dir: Path, option: str = "--out") -> None:
    """Make ``out_dir`` and write in it once, or refuse it as ``sira score`` refuses an ``--out`` it cannot write
    (``invalid_output``, exit 2). Until 2026-12-07 a folder under a file (or a read-only one) was found once the
    payments were simulated: ``internal: NotADirectoryError``, exit 1."""
    import os
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir, prefix=".sira-").close()  # nameless where it can be, else removed
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InvalidInput(f"{option} {out_dir}: cannot write in {out_dir} ({reason})", code="invalid_output",
                           details={"field": option.lstrip("-")}) from None


def simulate(cfg: SimulationConfig, out_dir: Path) -> SimulationResult:
    """Simulate ``cfg.days`` of payments and write events, labels and a manifest into ``out_dir`` (checked first:
    :func:`writable_folder`)."""
    writable_folder(out_dir)
    rng = np.random.default_rng(cfg.seed)
    world = _build_world(cfg, rng)
    legit = _legit(cfg, world, rng)
    fraud = _fraud(cfg, world, rng, len(legit))
    tx = _Tx.concat([legit, fraud])
    order = np.lexsort((np.arange(len(tx)), tx.t))  # by time, ties in generation order

    def take(values: np.ndarray | list[Any]) -> np.ndarray | list[Any]:
        if isinstance(values, np.ndarray):
            return values[order]
        return [values[i] for i in order.tolist()]

    tx = _Tx(*(take(getattr(tx, f)) for f in _Tx.__dataclass_fields__))  # type: ignore[arg-type]
    n = len(tx)
    event_ids = [payment_id(cfg.digest, i) for i in range(n)]
    country = world.term_country[tx.terminal]
    fx = np.array([c[3] for c in COUNTRIES])[country]
    amount = np.round(np.maximum(tx.amount_eur, 0.5) * fx, 2)
    customers = tx.customer.tolist()
    channels = tx.channel.tolist()
    online = [ch in (1, 3) for ch in channels]
    events = pa.table(
        {
            "event_id": pa.array(event_ids, pa.string()),
            "occurred_at": _timestamps(cfg.start_datetime, tx.t),
            "customer_id": pa.array([f"cus-{c:07d}" for c in customers], pa.string()),
            "card_number": pa.array(
                [world.card_numbers[c][k] for c, k in zip(customers, tx.card.tolist())], pa.string()
            ),
            "merchant_id": pa.array([f"mer-{m:06d}" for m in world.term_merchant[tx.terminal].tolist()], pa.string()),
            "terminal_id": pa.array([f"ter-{t:06d}" for t in tx.terminal.tolist()], pa.string()),
            "amount": pa.array(amount, pa.float64()),
            "currency": pa.array([COUNTRIES[k][1] for k in country.tolist()], pa.string()),
            "country": pa.array([COUNTRIES[k][0] for k in country.tolist()], pa.string()),
            "channel": pa.array([CHANNELS[ch] for ch in channels], pa.string()),
            "device_id": pa.array(tx.device, pa.string()),
            "ip_address": pa.array(tx.ip, pa.string()),
            "email": pa.array([world.emails[c] if o else None for c, o in zip(customers, online)], pa.string()),
            "phone": pa.array(
                [world.phones[c] if ch == 3 else None for c, ch in zip(customers, channels)], pa.string()
            ),
        }
    )
    lab = _labels(cfg, tx, rng)
    idx = lab["index"]
    labels = pa.table(
        {
            "event_id": pa.array([event_ids[i] for i in idx.tolist()], pa.string()),
            "label": pa.array(lab["label"], pa.bool_()),
            "source": pa.array(lab["source"].tolist(), pa.string()),
            "occurred_at": _timestamps(cfg.start_datetime, tx.t[idx]),
            "known_at": _timestamps(cfg.start_datetime, tx.t[idx] + lab["delay_s"]),
            "scenario": pa.array([tx.scenario[i] for i in idx.tolist()], pa.string()),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path, labels_path = out_dir / "events.parquet", out_dir / "labels.parquet"
    _write_parquet(events, events_path)
    _write_parquet(labels, labels_path)
    summary = _summary(cfg, tx, lab)
    manifest_path = out_dir / "simulation.json"
    manifest_path.write_text(
        json.dumps({"config": cfg.to_dict(), "summary": summary}, indent=2, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    return SimulationResult(events_path, labels_path, manifest_path, summary)


def _summary(cfg: SimulationConfig, tx: _Tx, lab: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(tx)
    n_fraud = int(tx.fraud.sum())
    by_scenario = {s: int(sum(1 for x in tx.scenario if x == s)) for s in SCENARIOS}
    delays = lab["delay_s"] / _SECONDS_PER_DAY
    chargeback = lab["source"] == "chargeback"
    return {
        "events": n,
        "fraud_events": n_fraud,
        "fraud_rate": round(n_fraud / n, 6) if n else 0.0,
        "fraud_by_scenario": {k: v for k, v in by_scenario.items() if v},
        "labels": int(idx_count) if (idx_count := lab["index"].size) else 0,
        "positive_labels": int(lab["label"].sum()),
        "negative_labels": int((~lab["label"]).sum()),
        "median_chargeback_delay_days": round(float(np.median(delays[chargeback])), 3) if chargeback.any() else None,
        "first_event_at": cfg.start_datetime.isoformat(),
        "days": cfg.days,
        "shift_day": cfg.shift_day,
    }
