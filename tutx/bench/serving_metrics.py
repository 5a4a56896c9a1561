"""Serving metrics from per-request timelines, as ``vllm bench serve`` reports them.

Pure functions, no HTTP: :class:`RequestRecord` holds what the client saw of one request (when it
was sent, when each streamed chunk arrived, when it ended, how many tokens came back, whether it
failed and why); :func:`serving_summary` turns a list of them into the summary:

- **TTFT** (time to first token): first chunk with text minus send time;
- **TPOT** (time per output token, the first excluded): ``(E2E - TTFT) / (output_tokens - 1)``,
  for requests with more than one output token;
- **ITL** (inter-token latency): every gap between consecutive chunks after the first, pooled
  over all requests (a chunk that carries several tokens is one gap, as in vLLM);
- **E2EL** (end-to-end latency): end minus send;
- **goodput**: completed requests per second that met every SLO given (``ttft``, ``tpot``,
  ``e2el`` in milliseconds; :func:`parse_goodput` reads ``"ttft:500 tpot:50"``), as in vLLM
  and MLPerf Inference's server scenario.

Each latency is summarised by mean, median, p90 and p99 (:func:`tutx.bench.percentile`), in ms.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tutx._validate import check_number, check_positive
from tutx.bench.timing import percentile

SLO_KEYS = ("ttft", "tpot", "e2el")
PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """One request as the client saw it (times in seconds on one monotonic clock).

    ``chunk_times``: arrival of every streamed chunk that carried output text, in order;
    ``output_tokens``: tokens generated (the server's ``usage`` when it reports one, else the
    number of text chunks); ``error``: why it failed (``None`` when it completed).
    """

    send: float
    prompt_tokens: int = 0
    chunk_times: list = field(default_factory=list)
    end: float | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.send

    @property
    def e2el(self) -> float:
        return self.end - self.send

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first; ``None`` with a single output token."""
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        """The gaps between consecutive chunks (seconds)."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]


def parse_goodput(spec) -> dict[str, float]:
    """``"ttft:500 tpot:50"`` (or a list of ``"key:ms"`` items, as argparse gives them) to
    ``{"ttft": 500.0, "tpot": 50.0}``; keys ``ttft``, ``tpot``, ``e2el``, values in ms > 0."""
    if isinstance(spec, str):
        items = spec.replace(",", " ").split()
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        items = [part for s in spec for part in s.replace(",", " ").split()]
    else:
        raise TypeError(f"goodput: expected a str like 'ttft:500 tpot:50' or a list of 'key:ms', got {spec!r}")
    if not items:
        raise ValueError("goodput: expected at least one SLO like 'ttft:500', got none")
    slos: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"goodput: expected 'key:ms' (e.g. 'ttft:500'), got {item!r}")
        if key not in SLO_KEYS:
            raise ValueError(f"goodput: expected a key in {SLO_KEYS}, got {key!r} in {item!r}")
        if key in slos:
            raise ValueError(f"goodput: {key!r} given twice")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"goodput: expected a number of milliseconds after '{key}:', got {value!r}") from None
        if not ms > 0 or ms == float("inf"):
            raise ValueError(f"goodput: expected a finite number of milliseconds > 0 for {key!r}, got {value!r}")
        slos[key] = ms
    return slos


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    """Whether a completed request met every SLO in ``slos`` (ms); a TPOT SLO holds trivially for
    a one-token answer (it has no TPOT), as in vLLM."""
    if not record.ok:
        return False
    for key, ms in slos.items():
        value = getattr(record, key)
        if value is not None and value * 1e3 > ms:
            return False
    return True


def summarise_ms(values) -> dict[str, float]:
    """``{"mean", "median", "p90", "p99"}`` of ``values`` (seconds) in milliseconds; zeros when empty."""
    values = list(values)
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0}
    out = {"mean": 1e3 * statistics.fmean(values)}
    for q in PERCENTILES:
        out["median" if q == 50 else f"p{q}"] = 1e3 * percentile(values, q)
    return out


def serving_summary(records, duration: float, slos: dict[str, float] | None = None) -> dict:
    """The run's summary: counts, throughputs (per second of ``duration``), latency stats in ms,
    goodput under ``slos`` (ms, see :func:`parse_goodput`), and the failure reasons counted."""
    check_positive("duration", duration)
    records = list(records)
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    reasons: dict[str, int] = {}
    for r in failed:
        reason = r.error or "no output"
        reasons[reason] = reasons.get(reason, 0) + 1
    inputs = sum(r.prompt_tokens for r in done)
    outputs = sum(r.output_tokens for r in done)
    out = {
        "completed": len(done), "failed": len(failed), "duration_s": duration,
        "total_input_tokens": inputs, "total_output_tokens": outputs,
        "request_throughput": len(done) / duration, "output_throughput": outputs / duration,
        "total_token_throughput": (inputs + outputs) / duration,
        "ttft_ms": summarise_ms(r.ttft for r in done),
        "tpot_ms": summarise_ms(r.tpot for r in done if r.tpot is not None),
        "itl_ms": summarise_ms(gap for r in done for gap in r.itl),
        "e2el_ms": summarise_ms(r.e2el for r in done),
        "failures": reasons,
    }
    if slos:
        good = sum(meets_slos(r, slos) for r in done)
        out.update(slos_ms=dict(slos), good_requests=good, request_goodput=good / duration)
    return out


def slo_break(rows: list[dict], fraction: float = 0.9) -> dict | None:
    """The first row of a rate sweep (ordered by rate) where fewer than ``fraction`` of the requests
    sent were good (completed within every SLO): where the SLO breaks. ``None`` when it never
    does, or when the rows carry no goodput (no SLO was given)."""
    check_number("fraction", fraction, minimum=0, maximum=1)
    for row in rows:
        sent = row["completed"] + row["failed"]
        if "good_requests" in row and sent and row["good_requests"] < fraction * sent:
            return row
    return None


__all__ = ["RequestRecord", "parse_goodput", "meets_slos", "summarise_ms", "serving_summary", "slo_break", "SLO_KEYS"]
