"""Training loops report their pace: rate and time left."""

from shopsearch.train import progress


def test_pace_reports_the_rate_and_the_minutes_left(monkeypatch):
    monkeypatch.setattr(progress.time, "time", lambda: 1100.0)
    assert progress.pace(50, 650, started=1000.0) == "0.50 steps/s, 20.0 min left"
    assert progress.pace(650, 650, started=1000.0).endswith("0.0 min left")
