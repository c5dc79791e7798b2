"""The stock task outside training (``trainer/tasks/usage.py``): its data summary table, a
made-up price window as ``stonk serve``'s example, the model card's data and warning lines,
and ``stonk predict`` on price files."""

from __future__ import annotations

from datetime import date

from trainer.tasks.usage import Card, TaskUsage

# a made-up close series for the example request, repeated to the run's window length
EXAMPLE_CLOSES = [100.0, 101.5, 100.9, 102.3, 103.0, 102.1, 102.8, 103.9, 103.2, 104.6, 105.1]


class StockUsage(TaskUsage):
    reads_prices = True

    def data_summary(self) -> str:
        from trainer.tasks.stock.summary import render
        from trainer.tasks.stock.task import StockTask

        return render(StockTask(self.cfg.data, self.cfg.reward))

    def example_messages(self) -> list[dict[str, str]]:
        """The task's system prompt and a window of the run's length (made-up prices): no
        data needed, the same form as training's prompts."""
        from trainer.tasks.stock.series import Window
        from trainer.tasks.stock.synthetic import business_days
        from trainer.tasks.stock.task import window_messages

        n = self.cfg.data.window
        closes = [EXAMPLE_CLOSES[i % len(EXAMPLE_CLOSES)] for i in range(n + 1)]
        days = business_days(date(2024, 3, 28), n + 1, backward=True)
        return window_messages(Window("ACME", "Acme Corp", days[1:], closes, "", closes[-1],
                                      base_date=days[0]))

    def card(self) -> Card:
        cfg, d = self.cfg, self.cfg.data
        data = (f"`{d.source}`" + (f" ({d.path})" if d.source == "local" else "")
                + (f" ({d.hf_name})" if d.source == "hf" else "")
                + (f", tickers {', '.join(d.tickers)}" if d.tickers else ""))
        what = (f"Given a company's last {d.window} daily closes with their % changes, it "
                "answers the next trading day's direction (UP/DOWN) with a confidence and a "
                "reasoning that cites the data.")
        data_lines = [
            f"- source: {data}; windows of {d.window} trading days",
            f"- splits by time per ticker: train up to {d.train_end}, validation up to "
            f"{d.val_end}, test after (up to {d.test_end or 'the data end'})",
            f"- stage {cfg.stage}: " + ("training prompts balanced 50/50 UP/DOWN"
                                        if cfg.stage == 1
                                        else "training on the natural distribution")]
        use = [
            "Research on reinforcement learning for language models and on how such a model "
            "reasons about price series. Prompts must look like training's: the system prompt "
            "and window format of Stonk-Trainer (`stonk serve` writes an example request).", "",
            "**Not investment advice.** Next-day direction is close to unpredictable on real "
            "markets; accuracy on the splits above says nothing about future returns, costs or "
            "risk. Do not trade on it.", ""]
        return Card(what, data_lines, use, tags=("finance",))

    def eval_notes(self) -> list[str]:
        return [f"data source: {self.cfg.data.source}"]
