"""viz helpers: the notebook widget wrapper."""

def test_widget_is_skipped_in_headless_runs_and_interactive_otherwise(monkeypatch, capsys):
    from advcl_lite.viz import widget
    calls = []

    def show(k=1):
        calls.append(k)

    monkeypatch.setenv("ADVCL_HEADLESS", "1")
    assert widget(show, k=[1, 2]) is None
    assert "skipped: headless run" in capsys.readouterr().out and calls == []
    monkeypatch.setenv("ADVCL_HEADLESS", "0")
    assert widget(show, k=[1, 2]) is not None and calls == [1], "interact calls the function once with the default"
