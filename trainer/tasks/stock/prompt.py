"""The user prompt for a market window: the company, each shown day's close and % change
(with that day's news when the source has it), and the question for the next day.

Departure from the seed: the seed's prompts carry a company description, one day's price
and news, and ask for three days ahead; ours show N days of closes with their changes and ask
for one day, so the data-usage reward can check every figure the model cites. Company info
and news appear only when the source has them (bundled and synthetic data have none), so
those prompts read exactly as before.
"""

from __future__ import annotations

MAX_INFO_CHARS = 400  # company descriptions are cut to this many characters
MAX_HEADLINES = 3  # per shown day


def fmt_price(p: float) -> str:
    return f"{p:.2f}" if p >= 10 else f"{p:.4f}"


def render_prompt(name: str, ticker: str, dates: list[str], closes: list[float],
                  changes_pct: list[float], info: str = "",
                  news: dict[str, list[str]] | None = None) -> str:
    """``closes`` holds N+1 values (the day before the window first); N dates and changes."""
    lines = [f"Stock: {ticker} ({name})"]
    if info:
        cut = info if len(info) <= MAX_INFO_CHARS else info[:MAX_INFO_CHARS].rsplit(" ", 1)[0]
        lines.append(f"About: {cut}")
    lines.append(f"Closing prices for the last {len(dates)} trading days:")
    for date, close, chg in zip(dates, closes[1:], changes_pct, strict=True):
        lines.append(f"{date}: {fmt_price(close)} ({chg:+.2f}%)")
        for headline in (news or {}).get(date, [])[:MAX_HEADLINES]:
            lines.append(f"  News: {headline}")
    lines.append("Will the next trading day's close be UP or DOWN?")
    return "\n".join(lines)
