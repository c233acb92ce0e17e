"""Stop signals: the handler only queues the signal, so a signal landing anywhere cannot deadlock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# The main thread holds the stop event's own lock, as inside `stop.wait()` just before it waits,
# when SIGTERM arrives: a handler that set the event there waited for that lock for good.
SIGNAL_INSIDE_WAIT = textwrap.dedent("""
    import signal, sys
    from mirror.cli import stop_on_signals

    with stop_on_signals(announce=None) as stop:
        with stop._cond:
            signal.raise_signal(signal.SIGTERM)
        print("set" if stop.wait(10) else "not set", flush=True)
        try:
            signal.raise_signal(signal.SIGTERM)  # a second one interrupts at once
        except KeyboardInterrupt:
            print("interrupted", flush=True)
""")


def run_script(script: str) -> tuple[str, str]:
    """Run Python `script` in a fresh interpreter; its stdout and stderr, failing the test if it hangs or fails."""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("it hung: the signal handler waited for a lock its own thread held")
    assert process.returncode == 0, err
    return out, err


def test_a_stop_signal_inside_the_stop_events_own_wait_does_not_deadlock() -> None:
    out, _ = run_script(SIGNAL_INSIDE_WAIT)
    assert out.split() == ["set", "interrupted"]


def test_the_scheduler_stops_on_a_signal_inside_its_own_wait() -> None:
    script = textwrap.dedent("""
        import signal, threading
        from mirror import schedule
        from mirror.config import Config

        Jobs = schedule.Jobs
        class Held(Jobs):  # the first wait of the main loop takes the lock, then the signal comes
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                wait = self.stop.wait
                def wait_with_signal(timeout=None):
                    with self.stop._cond:
                        signal.raise_signal(signal.SIGTERM)
                    return wait(timeout)
                self.stop.wait = wait_with_signal
        schedule.Jobs = Held
        config = Config()
        schedule.run_forever(config, lambda *a, **k: None, lambda *a, **k: None)
        print("stopped", flush=True)
    """)
    out, err = run_script(script)
    assert out.split() == ["stopped"] and "SIGTERM: stopping after the current page" in err
